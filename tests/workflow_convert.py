"""A saved (UI-format) ComfyUI workflow -> the API format that POST /prompt takes.

::

    api = to_api(json.load(open("workflows/basic_edit.json")), server.get_json("/object_info"))
    server.queue(api)

The UI format stores each node's widget values as a list, ``widgets_values``, in the order the front end made the
widgets, and connections in ``links`` as ``[id, from_node, from_slot, to_node, to_slot, type]``. The order of the
widgets is the node's inputs in ``/object_info``'s ``input_order`` (required, then optional), one per input that
has a widget (INT, FLOAT, STRING, BOOLEAN, a list of choices / COMBO; not ``forceInput``), plus the front end's
extra widgets that it also saves: the "control after generate" choice after an input marked
``control_after_generate`` (and after any INT input named ``seed``/``noise_seed``) and the upload button after a
combo marked ``image_upload`` (and its video/audio kin). An input connected by a link sends
``[from_node_id, from_slot]`` instead of its widget value. Front-end-only nodes (notes) are left out, as the front
end leaves them out; so are muted nodes (mode 2); bypassed ones (mode 4) are refused. A workflow saved before a
node gained optional widgets at its end has fewer values: those widgets keep their defaults, as the front end
loads such a file.

tests/integration/test_comfyui_frontend.py checks this conversion against the front end's own (``app.graphToPrompt``) for every
workflow in ``workflows/``.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

VIRTUAL_NODES = frozenset({"Note", "MarkdownNote"})  # the front end's own nodes; never sent to the server
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
SEED_NAMES = ("seed", "noise_seed")
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload")
MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4


class WorkflowError(ValueError):
    """The workflow does not fit the server's node definitions (the message names the node and input)."""


def has_widget(spec: list | tuple) -> bool:
    """Whether the front end gives this input a widget (a value saved in ``widgets_values``)."""
    kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def extra_widgets(name: str, spec: list | tuple) -> int:
    """How many widgets the front end adds right after this input's own (saved in ``widgets_values`` too).

    An INT input gets the "control after generate" choice when its spec says ``control_after_generate`` - or,
    when the spec does not say, when it is named ``seed`` or ``noise_seed`` (the front end's rule).
    """
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    control = options.get("control_after_generate")
    if control is None and spec[0] == "INT":
        control = name in SEED_NAMES
    return int(bool(control)) + int(any(options.get(f) for f in UPLOAD_FLAGS))


def _ordered_inputs(info: Mapping[str, Any]) -> Iterator[tuple[str, list, bool]]:
    """(name, spec, optional) of every input in the front end's widget order."""
    specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items() if k != "hidden"}
    for name in order.get("required", []):
        yield name, specs[name], False
    for name in order.get("optional", []):
        yield name, specs[name], True


def widget_default(spec: list | tuple) -> Any:
    """The value a new widget starts with: its ``default``, else a combo's first choice."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in options:
        return options["default"]
    kind = spec[0]
    return kind[0] if isinstance(kind, list) and kind else options.get("options", [None])[0]


def node_inputs(node: Mapping[str, Any], info: Mapping[str, Any],
                links: Mapping[int, list]) -> dict[str, Any]:
    """The API ``inputs`` of one UI node."""
    label = f"node {node['id']} ({node['type']})"
    values = node.get("widgets_values") or []
    if not isinstance(values, list):
        raise WorkflowError(f"{label}: widgets_values is a {type(values).__name__}; only lists are supported")
    linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
    inputs: dict[str, Any] = {}
    position = 0
    for name, spec, optional in _ordered_inputs(info):
        if has_widget(spec):
            if position >= len(values) and optional:  # added to the node after the workflow was saved
                inputs[name] = widget_default(spec)
            elif position >= len(values):
                raise WorkflowError(f"{label}: no saved value for {name!r} (widgets_values has {len(values)})")
            else:
                inputs[name] = values[position]
                position += 1 + extra_widgets(name, spec)
        if name in linked:
            link = links.get(linked[name])
            if link is None:
                raise WorkflowError(f"{label}: input {name!r} refers to link {linked[name]}, which does not exist")
            inputs[name] = [str(link[1]), int(link[2])]
    if position != len(values):
        raise WorkflowError(f"{label}: {len(values)} saved widget values, the server's definition explains "
                            f"{position} (a different version of the node?)")
    return inputs


def to_api(workflow: Mapping[str, Any], object_info: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The API-format graph of ``workflow`` (a UI-format dict) for a server with ``object_info``."""
    links = {int(link[0]): link for link in workflow.get("links", [])}
    sent = {}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES or node.get("mode", MODE_ALWAYS) == MODE_NEVER:
            continue
        if node.get("mode", MODE_ALWAYS) != MODE_ALWAYS:
            raise WorkflowError(f"node {node['id']} ({node['type']}): mode {node['mode']} (bypass) is not supported")
        info = object_info.get(node["type"])
        if info is None:
            raise WorkflowError(f"node {node['id']}: the server has no node type {node['type']!r}")
        sent[str(node["id"])] = node
    api = {}
    for node_id, node in sent.items():
        inputs = node_inputs(node, object_info[node["type"]], links)
        inputs = {k: v for k, v in inputs.items() if not (isinstance(v, list) and v[0] not in sent)}  # from muted
        title = node.get("title") or object_info[node["type"]].get("display_name") or node["type"]
        api[node_id] = {"class_type": node["type"], "inputs": inputs, "_meta": {"title": title}}
    return api


def node_ids(workflow: Mapping[str, Any], node_type: str) -> list[str]:
    """The ids (as the API format spells them) of the workflow's nodes of ``node_type``."""
    return [str(n["id"]) for n in workflow["nodes"] if n["type"] == node_type]
