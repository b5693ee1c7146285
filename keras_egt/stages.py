"""Cutting a Keras backbone into the stages of an early-exit model.

An early-exit model runs its backbone stage by stage: stage k maps the feature map
at exit layer k-1 (the image for k = 1) to the feature map at exit layer k, and exit
head k reads the latter. That works only where each cut is crossed by that single
tensor: a residual connection jumping over an exit layer would need two tensors
handed on, which neither the cascade nor the firmware's one-buffer handoff provides.
`split_backbone` checks this before building anything and names a valid cut nearby.
"""

import keras

__all__ = ["split_backbone", "valid_cuts"]


def _producer(tensor):
    return tensor._keras_history.operation


def _parents(tensor):
    operation, node_index, _ = tensor._keras_history
    return operation._inbound_nodes[node_index].input_tensors


def _reaches(start, stop):
    """The tensors found walking back from `start`; walking stops at `stop` (excluded)."""
    seen, todo = {}, [start]
    while todo:
        tensor = todo.pop()
        if id(tensor) in seen or tensor is stop:
            continue
        seen[id(tensor)] = tensor
        todo.extend(_parents(tensor))
    return seen


def _is_input(tensor):
    return isinstance(_producer(tensor), keras.layers.InputLayer)


def _graph(backbone):
    if isinstance(backbone, keras.Sequential) and not backbone.built:
        raise ValueError(
            "The backbone is a Sequential model that is not built yet: give it an "
            "`keras.Input(shape=...)` first layer or call `backbone.build(input_shape)`."
        )
    try:
        inputs, output = backbone.inputs, backbone.outputs
    except (AttributeError, ValueError):
        inputs = output = None
    if not inputs or not output:
        raise TypeError(
            "The backbone must be a Functional or Sequential Keras model (its layers form "
            f"a graph that can be cut at the exit layers); got {type(backbone).__name__}. "
            "Wrap a subclassed network's stages as layers of a Functional model."
        )
    if len(inputs) != 1:
        raise ValueError(f"The backbone must take one input; it takes {len(inputs)}.")
    return inputs[0]


def _feature_layers(backbone):
    """Layers with one 4-D output of known size, in graph order."""
    layers = []
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            shape = tuple(layer.output.shape)
        except (AttributeError, ValueError):
            continue
        if len(shape) == 4 and all(d is not None for d in shape[1:]):
            layers.append(layer)
    return layers


def valid_cuts(backbone, before=None):
    """The layers of `backbone` whose output alone carries everything after them.

    A layer is a valid cut if every path from the backbone's input to `before`'s
    output (default: the backbone's output) passes through the layer's output.

    The names are those of this backbone object. Automatic names (`re_lu_22`)
    depend on how many layers the process built before, so a second build of a
    `keras.applications` model names them differently: turn a name into the layer
    object of the same build (`backbone.get_layer(name)`) and pass that as an exit
    layer.

    Args:
        backbone: a Functional or Sequential Keras model.
        before: a layer of `backbone` (or its name), or None for the backbone's
            output.

    Returns:
        The names of the valid cut layers, in graph order.

    Example:
    >>> backbone = keras.applications.MobileNetV2(weights=None, include_top=False)
    >>> cuts = valid_cuts(backbone)
    >>> exit_layers = [backbone.get_layer(cuts[i]) for i in (20, 60, -1)]
    """
    image = _graph(backbone)
    end = backbone.outputs[0] if before is None else _resolve(backbone, before).output
    names = []
    for layer in _feature_layers(backbone):
        if layer.output is end:
            names.append(layer.name)
            break
        reached = _reaches(end, layer.output)
        if id(image) not in reached and id(layer.output) not in reached:
            names.append(layer.name)
    return names


def _resolve(backbone, exit_layer):
    """The layer of `backbone` that `exit_layer` (a layer object or a name) means."""
    if isinstance(exit_layer, keras.layers.Layer):
        if not any(layer is exit_layer for layer in backbone.layers):
            raise ValueError(
                f"exit layer {exit_layer.name!r} is not a layer of the backbone "
                f"{backbone.name!r} (a layer of another build of it, or of a nested "
                "model?): pass layers of this backbone object, e.g. "
                f"backbone.get_layer(name) for a name in valid_cuts(backbone). Received: "
                f"exit_layer={exit_layer!r:.80}."
            )
        return exit_layer
    try:
        return backbone.get_layer(str(exit_layer))
    except ValueError:
        candidates = [layer.name for layer in _feature_layers(backbone)]
        raise ValueError(
            f"The backbone {backbone.name!r} has no layer named {exit_layer!r}. Layers "
            f"with a 4-D feature map: {', '.join(candidates[-12:])}"
            f"{' (the last 12 shown)' if len(candidates) > 12 else ''}. Automatic names "
            "such as 're_lu_22' count the layers built before in the process (a second "
            "build of a keras.applications model has others): pass the layer objects "
            "instead, e.g. [backbone.get_layer(n) for n in valid_cuts(backbone)[:3]]. "
            f"Received: exit_layer={exit_layer!r:.80}."
        ) from None


def _nearby(cuts, order, name):
    position = order[name]
    earlier = [c for c in cuts if order[c] < position]
    later = [c for c in cuts if order[c] > position]
    return earlier[-1:] + later[:1]


def split_backbone(backbone, exit_layers):
    """Cuts `backbone` at `exit_layers` into one Functional model per stage.

    Stage k takes the output of exit layer k-1 (the backbone's input for k = 1) and
    returns the output of exit layer k; the stages share the backbone's layers and
    weights. Every exit layer must output a 4-D `(batch, H, W, C)` feature map of
    known size, the layers must come in graph order, and no connection may skip
    over an exit layer (the stages are joined by one tensor each).

    Args:
        backbone: a built Functional or Sequential Keras model with one input.
        exit_layers: layer objects of `backbone` (or their names) after which an
            exit sits, first to last; at least 2. Layer objects are the safe choice
            for automatically named layers, whose names change between builds
            (see `valid_cuts`).

    Returns:
        A list of `len(exit_layers)` `keras.Model`s, first stage first.

    Example:
    >>> stages = split_backbone(backbone, ["block_2_add", "block_5_add", "out_relu"])
    >>> h = x
    >>> for stage in stages: h = stage(h)
    """
    image = _graph(backbone)
    if isinstance(exit_layers, (str, keras.layers.Layer)):
        exit_layers = [exit_layers]
    layers = [_resolve(backbone, e) for e in exit_layers]
    if len(layers) < 2:
        raise ValueError(
            f"An early-exit model needs at least 2 exit layers (the last one is the final "
            f"exit); got {len(layers)}: {[layer.name for layer in layers]}."
        )
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        raise ValueError(f"exit_layers names a layer twice: {names}.")
    for layer in layers:
        shape = tuple(layer.output.shape)
        if len(shape) != 4 or any(d is None for d in shape[1:]):
            raise ValueError(
                f"exit layer {layer.name!r} outputs shape {shape}; an exit needs a 4-D "
                "feature map (batch, height, width, channels) of known size."
            )
    order = {layer.name: i for i, layer in enumerate(backbone.layers)}
    taps = [image] + [layer.output for layer in layers]
    for k in range(2, len(taps)):
        reached = _reaches(taps[k], taps[k - 1])
        if id(image) not in reached:
            continue
        crossed = names[k - 2]
        if id(taps[k - 1]) not in _reaches(taps[k], None):
            raise ValueError(
                f"exit_layers must come in graph order, each depending on the one before: "
                f"{names[k - 1]!r} does not depend on {crossed!r}."
            )
        # Walking back from exit k got past exit k-1 to the image: a connection
        # from before exit layer k-1 reaches a layer after it.
        upstream = _reaches(taps[k - 1], None)
        source = next(
            (_producer(p).name for key, t in reached.items() if key not in upstream
             for p in _parents(t) if id(p) in upstream and p is not taps[k - 1]),
            None,
        )
        hint = _nearby(valid_cuts(backbone), order, crossed)
        raise ValueError(
            f"Cannot cut the backbone after {crossed!r}: a connection from "
            f"{source or 'an earlier layer'!r} skips over it to a later layer (a "
            "residual/skip connection), so the stages would need two tensors. "
            f"Valid cuts nearby: {', '.join(hint) if hint else 'none'} "
            "(`keras_egt.stages.valid_cuts(backbone)` lists them all)."
        )
    stage_models = []
    for k in range(1, len(taps)):
        stage_models.append(keras.Model(taps[k - 1], taps[k], name=f"stage_{k}"))
    return stage_models
