"""The nodes as V3 ``comfy_api.latest`` nodes, offered through ``comfy_entrypoint``."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .nodes import CATEGORY, NODES, In, Node, Out

HIDDEN = {"prompt": io.Hidden.prompt, "extra_pnginfo": io.Hidden.extra_pnginfo}
SIMPLE = {"IMAGE": io.Image, "FLOAT": io.Float, "INT": io.Int, "STRING": io.String, "BOOLEAN": io.Boolean}


def comfy_type(name: str):
    return SIMPLE.get(name) or io.Custom(name)


def schema_input(spec: In):
    common = {"optional": spec.optional, "tooltip": spec.tooltip}
    if spec.type == "COMBO":
        return io.Combo.Input(spec.name, options=spec.options(), default=spec.default, **common)
    if spec.type in ("FLOAT", "INT"):
        numbers = {k: getattr(spec, k) for k in ("min", "max", "step") if getattr(spec, k) is not None}
        return comfy_type(spec.type).Input(spec.name, default=spec.default, force_input=spec.force_input or None,
                                           **numbers, **common)
    if spec.type in ("STRING", "BOOLEAN"):
        return comfy_type(spec.type).Input(spec.name, default=spec.default, force_input=spec.force_input or None,
                                           **common)
    return comfy_type(spec.type).Input(spec.name, **common)


def schema_output(spec: Out):
    return comfy_type(spec.type).Output(spec.name, display_name=spec.name, tooltip=spec.tooltip,
                                        is_output_list=spec.is_list)


def node_class(node: Node) -> type[io.ComfyNode]:
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id=node.id, display_name=node.display_name, category=CATEGORY,
                         description=node.description, inputs=[schema_input(i) for i in node.inputs],
                         outputs=[schema_output(o) for o in node.outputs],
                         hidden=[HIDDEN[name] for name in node.hidden], is_output_node=node.output_node,
                         is_input_list=node.input_is_list)

    def execute(cls, **inputs) -> io.NodeOutput:
        hidden = {name: getattr(cls.hidden, name) for name in node.hidden}
        result = node.run(**inputs, **hidden)
        return io.NodeOutput(*result.values, ui=result.ui())

    return type(node.id, (io.ComfyNode,), {"define_schema": classmethod(define_schema),
                                           "execute": classmethod(execute)})


class QPonderExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [node_class(node) for node in NODES]


async def comfy_entrypoint() -> QPonderExtension:
    return QPonderExtension()
