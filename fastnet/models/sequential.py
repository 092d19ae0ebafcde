"""Sequential: a plain stack of layers, each feeding the next."""
from fastnet.layers.base import Layer
from fastnet.layers.core import InputLayer, KerasTensor
from fastnet.models.model import Model


class Sequential(Model):
    """A linear stack of layers.

    >>> model = Sequential([Conv2D(32, 3, activation="relu", input_shape=(28, 28, 1)),
    ...                     Flatten(), Dense(10, activation="softmax")])
    """

    def __init__(self, layers=None, name=None):
        super().__init__(name=name or "sequential")
        self._layers = []
        self._declared_input = None
        if layers is not None:
            if not isinstance(layers, (list, tuple)):
                raise TypeError(f"Sequential: layers must be a list, got {type(layers).__name__}")
            for layer in layers:
                self.add(layer)

    @property
    def layers(self):
        return list(self._layers)

    def add(self, layer):
        """Append a layer (or an ``Input(shape)`` as the first entry)."""
        if isinstance(layer, KerasTensor):
            layer = layer._keras_history
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add: expected a fastnet Layer or Input, "
                            f"got {type(layer).__name__}")
        if isinstance(layer, InputLayer):
            if self._layers or self._declared_input is not None:
                raise ValueError("Sequential: an Input can only be the first entry")
            self._declared_input = layer
            return
        if any(existing is layer for existing in self._layers):
            raise ValueError(f"Sequential.add: layer {layer.name} is already in this model")
        self._layers.append(layer)
        self.built = False
        declared = self._input_shape_declared()
        if declared is not None:
            self.build((None,) + declared)

    def pop(self):
        """Remove the last layer."""
        if not self._layers:
            raise ValueError("Sequential.pop: the model has no layers")
        layer = self._layers.pop()
        self.built = False
        if self._layers and self._input_shape_declared() is not None:
            self.build((None,) + self._input_shape_declared())
        return layer

    def _input_shape_declared(self):
        if self._declared_input is not None:
            return self._declared_input.batch_input_shape
        return self._layers[0].batch_input_shape if self._layers else None

    def _build_layers(self, input_shape):
        if not self._layers:
            raise ValueError("Sequential: add at least one layer before building")
        shape = input_shape
        for i, layer in enumerate(self._layers):
            if not layer.built:
                layer.build(shape)
            elif layer.input_shape != shape:
                raise ValueError(f"layer {layer.name} was built for inputs {layer.input_shape} "
                                 f"but receives {shape}")
            layer.need_input_grad = i > 0
            shape = layer.output_shape
        self._inference_plan = self._plan_inference()
        return shape

    def _plan_inference(self):
        """Steps of the inference forward: (layer, bn, activation) folds a Conv2D/Dense without
        activation and the BatchNormalization after it (and a following Activation('relu'))
        into one kernel call; (layer, None, None) runs a layer as it is."""
        from fastnet.layers.conv import Conv2D
        from fastnet.layers.core import Activation, Dense
        from fastnet.layers.normalization import BatchNormalization
        plan, seq, i = [], self._layers, 0
        while i < len(seq):
            layer = seq[i]
            nxt = seq[i + 1] if i + 1 < len(seq) else None
            if isinstance(layer, (Conv2D, Dense)) and layer.activation is None \
                    and isinstance(nxt, BatchNormalization) and nxt.axis in (-1, len(
                        layer.output_shape)):
                j, act = i + 2, None
                if j < len(seq) and type(seq[j]) is Activation and seq[j].activation == "relu":
                    j, act = j + 1, "relu"
                plan.append((layer, nxt, act))
                i = j
            else:
                plan.append((layer, None, None))
                i += 1
        return plan

    def _forward(self, x, training):
        if training:
            for layer in self._layers:
                x = layer.forward(x, training)
            return x
        for layer, bn, act in self._inference_plan:
            x = layer.forward(x, False) if bn is None else layer.forward_folded(x, bn, act)
        return x

    def _backward(self, dy):
        for layer in reversed(self._layers):
            dy = layer.backward(dy)
            if dy is None:
                break
        return dy

    def get_config(self):
        """Name, the layers' class names and configs, and the input shape once built."""
        cfg = {"name": self.name,
               "layers": [{"class_name": type(l).__name__, "config": l.get_config()}
                          for l in self._layers]}
        shape = self._input_shape_declared() or (self._input_shape if self.built else None)
        if shape is not None:
            cfg["input_shape"] = list(shape)
        return cfg

    @classmethod
    def from_config(cls, config):
        """Rebuild from ``get_config()``; layer classes are looked up among fastnet's own."""
        from fastnet import layers as layers_mod
        from fastnet.saving import _from_class_config
        model = cls(name=config.get("name"))
        if not isinstance(config.get("layers"), list):
            raise ValueError("Sequential config needs a list of layers")
        for entry in config["layers"]:
            model.add(_from_class_config(layers_mod, Layer, entry))
        if config.get("input_shape") is not None and not model.built:
            model.build((None,) + tuple(config["input_shape"]))
        return model
