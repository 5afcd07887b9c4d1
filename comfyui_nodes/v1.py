"""The nodes as V1 classes (``NODE_CLASS_MAPPINGS``), for a ComfyUI without the V3 schema."""

from __future__ import annotations

from .nodes import CATEGORY, NODES, In, Node

HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


def input_type(spec: In) -> tuple:
    options = {"tooltip": spec.tooltip}
    for key in ("default", "min", "max", "step"):
        if getattr(spec, key) is not None:
            options[key] = getattr(spec, key)
    if spec.force_input:
        options["forceInput"] = True
    return (spec.options() if spec.type == "COMBO" else spec.type, options)


def node_class(node: Node) -> type:
    def INPUT_TYPES(cls):
        types = {"required": {i.name: input_type(i) for i in node.inputs if not i.optional},
                 "optional": {i.name: input_type(i) for i in node.inputs if i.optional}}
        if node.hidden:
            types["hidden"] = {name: HIDDEN[name] for name in node.hidden}
        return types

    def run(self, **inputs):
        for name in node.hidden:  # a list node gets its hidden values as lists too
            if node.input_is_list and isinstance(inputs.get(name), list):
                inputs[name] = inputs[name][0]
        result = node.run(**inputs)
        ui = result.ui()
        return {"ui": ui, "result": result.values} if ui else result.values

    return type(node.id, (), {
        "INPUT_TYPES": classmethod(INPUT_TYPES), "FUNCTION": "run", "run": run, "CATEGORY": CATEGORY,
        "DESCRIPTION": node.description, "OUTPUT_NODE": node.output_node, "INPUT_IS_LIST": node.input_is_list,
        "RETURN_TYPES": tuple(o.type for o in node.outputs), "RETURN_NAMES": tuple(o.name for o in node.outputs),
        "OUTPUT_IS_LIST": tuple(o.is_list for o in node.outputs),
        "OUTPUT_TOOLTIPS": tuple(o.tooltip for o in node.outputs),
    })


def mappings() -> dict:
    """The module attributes a V1 custom node folder exports."""
    return {"NODE_CLASS_MAPPINGS": {node.id: node_class(node) for node in NODES},
            "NODE_DISPLAY_NAME_MAPPINGS": {node.id: node.display_name for node in NODES}}
