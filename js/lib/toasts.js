// Plain logic for goan's toasts: every toast has a lifetime, a repeat of a toast still on screen is
// not stacked again, and long file names can wrap at their separators. No DOM here.

export const DEFAULT_LIFE = 5000;
export const ERROR_LIFE = 10000;
export const MAX_LIFE = 15000;

/** A toast's lifetime in ms: always finite and positive (a toast without one never leaves). */
export function toastLife(severity, life) {
  const n = Number(life);
  if (Number.isFinite(n) && n > 0) return Math.min(n, MAX_LIFE);
  return severity === "error" ? ERROR_LIFE : DEFAULT_LIFE;
}

// The frontend's toast methods (extensionManager.toast.success/error/info/warning, frontends >= 1.5x)
// for goan's severities; toast.add({severity, summary, detail, life}) is their deprecated predecessor.
const TOAST_METHODS = { success: "success", info: "info", warn: "warning", warning: "warning", error: "error" };

/**
 * Show `entry` ({severity, summary, detail, life}) through the frontend's toast manager: its method
 * for the severity where it has one (title, {description, duration, closable}; its toasts stay until
 * closed unless given a duration), else `add(entry)`. Returns the method used, or null when the
 * manager has neither.
 */
export function sendToast(manager, entry) {
  if (!manager) return null;
  const method = TOAST_METHODS[entry.severity] || "info";
  if (typeof manager[method] === "function") {
    manager[method](entry.summary, { description: entry.detail, duration: entry.life, closable: true });
    return method;
  }
  if (typeof manager.add === "function") {
    manager.add(entry);
    return "add";
  }
  return null;
}

export function toastKey(severity, summary, detail) {
  return `${severity}|${summary}|${detail ?? ""}`;
}

/**
 * A memory of the toasts on screen: `admit(key, life, now)` is true when the toast should be shown
 * (not the same one still showing), and remembers it until now + life.
 */
export function toastDeduper() {
  const until = new Map();
  return {
    admit(key, life, now) {
      for (const [k, t] of until) if (t <= now) until.delete(k);
      if (until.has(key)) return false;
      until.set(key, now + life);
      return true;
    },
    size() {
      return until.size;
    },
  };
}

const ZWSP = "\u200b";
const LONG = 20;

/**
 * Text for a toast where long words (file names, paths) may wrap after a path separator, `_`, `-`
 * or `.`, instead of mid-word: a zero-width space goes after those characters inside words longer
 * than 20 characters. Short words and ordinary sentences are left alone.
 */
export function wrappable(text) {
  if (text === undefined || text === null) return text;
  return String(text).replace(/\S{21,}/g, (word) => (word.length > LONG ? word.replace(/([/\\_.-])(?=[^/\\_.\s-])/g, `$1${ZWSP}`) : word));
}

/** The text back without the break opportunities `wrappable` added. */
export function unwrappable(text) {
  return text === undefined || text === null ? text : String(text).replaceAll(ZWSP, "");
}
