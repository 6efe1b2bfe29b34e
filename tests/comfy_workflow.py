"""UI-format workflows: node definitions in /object_info's shape, a checker, and the UI -> API conversion.

`node_info(cls)` describes a goan node as ComfyUI's /object_info would; `check_workflow` checks a
UI workflow against such definitions (types exist, widget values valid, links type-check);
`to_api` turns it into the API-format prompt that POST /prompt takes, as the frontend does
(frontend-only nodes dropped, widget values named, links as [node_id, output_index]).

Definitions of current ComfyUI's shape are understood too: a dynamic combo (COMFY_DYNAMICCOMBO_V3,
e.g. SaveVideo's format) is a widget whose chosen option brings its own widgets, named
"format.codec" in the prompt; optional widgets a newer ComfyUI added after a workflow was saved
(CreateVideo's bit_depth) take their defaults, as the frontend gives them.
"""

from __future__ import annotations

from dataclasses import dataclass

DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", DYNAMIC_COMBO)
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
# Combos whose choices are files of the installation (models, input files): any name is a valid value here.
FILE_COMBOS = {("GoanTransformerLoader", "model"), ("GoanVAELoader", "folder"), ("GoanTextEncoderLoader", "folder"),
               ("GoanImageEncoderLoader", "folder"), ("GoanLoadResume", "resume_file")}


def node_info(cls) -> dict:
    """A node class as /object_info describes it (the parts a workflow needs)."""
    spec = cls.INPUT_TYPES()
    inputs = {section: dict(spec[section]) for section in ("required", "optional") if section in spec}
    return {"input": {s: {k: list(v) for k, v in d.items()} for s, d in inputs.items()},
            "input_order": {s: list(d) for s, d in inputs.items()},
            "output": list(cls.RETURN_TYPES), "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
            "output_node": bool(getattr(cls, "OUTPUT_NODE", False))}


def _spec(info: dict, name: str):
    for section in ("required", "optional"):
        if name in info["input"].get(section, {}):
            spec = info["input"][section][name]
            return spec[0], (spec[1] if len(spec) > 1 else {}), section == "optional"
    raise KeyError(name)


def is_widget(kind, options) -> bool:
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


@dataclass
class Widget:
    """One value of a node's widgets_values: its input name (None for a value that is not an input: a
    seed's control_after_generate mode, LoadImage's upload button), spec, and the value."""

    name: str | None
    kind: object = None
    options: dict | None = None
    value: object = None


def _walk_widgets(inputs: dict, order: dict | None, values: list, prefix: str, out: list, missing: list) -> None:
    for section in ("required", "optional"):
        specs = inputs.get(section, {})
        for name in (order or {}).get(section, list(specs)):
            kind, options = specs[name][0], (specs[name][1] if len(specs[name]) > 1 else {})
            if not is_widget(kind, options):
                continue
            if not values:
                missing.append((prefix + name, section == "optional"))
                continue
            out.append(Widget(prefix + name, kind, options, values.pop(0)))
            for extra in ("control_after_generate", "image_upload"):
                if options.get(extra) and values:
                    out.append(Widget(None, value=values.pop(0)))
            if kind == DYNAMIC_COMBO:
                chosen = next((o for o in options.get("options", []) if o.get("key") == out[-1].value), None)
                if chosen is not None:
                    _walk_widgets(chosen.get("inputs", {}), None, values, f"{prefix}{name}.", out, missing)


def node_widgets(info: dict, values: list) -> tuple[list[Widget], list, list[tuple[str, bool]]]:
    """`values` (a node's widgets_values) matched to the node's widgets: (widgets, values left over,
    widgets without a value as (name, optional))."""
    out, missing, rest = [], [], list(values)
    _walk_widgets(info["input"], info["input_order"], rest, "", out, missing)
    return out, rest, missing


def widget_names(info: dict) -> list[str | None]:
    """The names behind the widgets_values of a node with plain widgets, in order (see `Widget`)."""
    return [w.name for w in node_widgets(info, [None] * 10_000)[0]]


def socket_type(info: dict, name: str) -> str:
    kind, _, _ = _spec(info, name)
    return "COMBO" if isinstance(kind, list) else kind


def _check_widget(node_type: str, name: str, kind, options: dict, value, file_combos=FILE_COMBOS) -> str | None:
    where = f"{node_type}.{name} = {value!r}"
    if kind == DYNAMIC_COMBO:
        keys = [o.get("key") for o in options.get("options", [])]
        return None if value in keys else f"{where}: not one of {keys}"
    if isinstance(kind, list) or kind == "COMBO":
        choices = kind if isinstance(kind, list) else options.get("options", [])
        if (node_type, name) in file_combos or not choices:
            return None if isinstance(value, str) and value else f"{where}: expected a file name"
        return None if value in choices else f"{where}: not one of {choices}"
    if kind == "STRING":
        return None if isinstance(value, str) else f"{where}: expected text"
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{where}: expected true/false"
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{where}: expected a number"
        if kind == "INT" and value != int(value):
            return f"{where}: expected a whole number"
        if "min" in options and value < options["min"] or "max" in options and value > options["max"]:
            return f"{where}: outside {options.get('min')}..{options.get('max')}"
    return None


def check_workflow(workflow: dict, infos: dict, file_combos=FILE_COMBOS) -> list[str]:
    """Every problem found, as readable lines; empty when the workflow is sound.

    `file_combos`: (node type, input) pairs whose combo lists files of an installation, so any
    file name is accepted there."""
    problems = []
    for key in ("nodes", "links", "last_node_id", "last_link_id", "version"):
        if key not in workflow:
            problems.append(f"missing top-level key {key!r}")
    nodes = {node["id"]: node for node in workflow.get("nodes", [])}
    links = {link[0]: link for link in workflow.get("links", [])}
    if len(nodes) != len(workflow.get("nodes", [])):
        problems.append("duplicate node ids")
    if nodes and workflow.get("last_node_id", 0) < max(nodes):
        problems.append("last_node_id is below the highest node id")
    if links and workflow.get("last_link_id", 0) < max(links):
        problems.append("last_link_id is below the highest link id")
    for node in nodes.values():
        kind = node.get("type")
        if kind in FRONTEND_ONLY:
            continue
        if kind not in infos:
            problems.append(f"node {node['id']}: unknown type {kind!r}")
            continue
        info = infos[kind]
        values = node.get("widgets_values", [])
        widgets, extra, missing = node_widgets(info, values)
        required_missing = [name for name, optional in missing if not optional]
        if extra or required_missing:
            problems.append(f"node {node['id']} {kind}: {len(values)} widget values for widgets "
                            f"{[w.name for w in widgets] + [name for name, _ in missing]}")
        else:
            for w in widgets:
                if w.name is not None:
                    problem = _check_widget(kind, w.name, w.kind, w.options, w.value, file_combos)
                    if problem:
                        problems.append(f"node {node['id']}: {problem}")
        linked = set()
        for slot, socket in enumerate(node.get("inputs", [])):
            try:
                expected = socket_type(info, socket["name"])
            except KeyError:
                problems.append(f"node {node['id']} {kind}: no input named {socket['name']!r}")
                continue
            if socket.get("type") != expected:
                problems.append(f"node {node['id']} {kind}.{socket['name']}: socket type {socket.get('type')} "
                                f"but the node takes {expected}")
            if socket.get("link") is not None:
                linked.add(socket["name"])
                link = links.get(socket["link"])
                if link is None or link[3] != node["id"] or link[4] != slot:
                    problems.append(f"node {node['id']} {kind}.{socket['name']}: link {socket['link']} does not "
                                    "end here")
        for name in info["input_order"].get("required", []):
            spec_kind, options, _ = _spec(info, name)
            if not is_widget(spec_kind, options) and name not in linked:
                problems.append(f"node {node['id']} {kind}: required input {name!r} is not connected")
        for slot, output in enumerate(node.get("outputs", [])):
            if slot >= len(info["output"]) or output.get("type") != info["output"][slot]:
                problems.append(f"node {node['id']} {kind}: output {slot} {output.get('type')} does not match "
                                f"{info['output']}")
            for link_id in output.get("links") or []:
                link = links.get(link_id)
                if link is None or link[1] != node["id"] or link[2] != slot:
                    problems.append(f"node {node['id']} {kind}: output link {link_id} does not start here")
    for link_id, (_, src, src_slot, dst, dst_slot, kind) in links.items():
        if src not in nodes or dst not in nodes:
            problems.append(f"link {link_id}: joins missing nodes")
            continue
        src_info, dst_info = infos.get(nodes[src]["type"]), infos.get(nodes[dst]["type"])
        if src_info is not None and (src_slot >= len(src_info["output"]) or src_info["output"][src_slot] != kind):
            problems.append(f"link {link_id}: {nodes[src]['type']} output {src_slot} is not {kind}")
        if dst_info is not None:
            sockets = nodes[dst].get("inputs", [])
            if dst_slot >= len(sockets):
                problems.append(f"link {link_id}: {nodes[dst]['type']} has no input slot {dst_slot}")
            elif socket_type(dst_info, sockets[dst_slot]["name"]) != kind:
                problems.append(f"link {link_id}: {kind} into {nodes[dst]['type']}.{sockets[dst_slot]['name']} "
                                f"({socket_type(dst_info, sockets[dst_slot]['name'])})")
    if not any(infos.get(n.get("type"), {}).get("output_node") for n in nodes.values()):
        problems.append("no output node: ComfyUI would run nothing")
    return problems


def to_api(workflow: dict, infos: dict) -> dict:
    """The API-format prompt for POST /prompt: {node_id: {class_type, inputs}}."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):
            continue
        info = infos[node["type"]]
        widgets, _, _ = node_widgets(info, node.get("widgets_values", []))
        inputs = {w.name: w.value for w in widgets if w.name is not None}
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                _, src, src_slot, _, _, _ = links[socket["link"]]
                inputs[socket["name"]] = [str(src), src_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def set_widget(workflow: dict, node_type: str, name: str, value, infos: dict) -> None:
    """Set widget `name` on every node of `node_type` in a UI workflow."""
    found = False
    for node in workflow["nodes"]:
        if node["type"] == node_type:
            widgets, _, _ = node_widgets(infos[node_type], node["widgets_values"])
            index = [w.name for w in widgets].index(name)
            node["widgets_values"][index] = value
            found = True
    if not found:
        raise KeyError(f"no {node_type} node in the workflow")
