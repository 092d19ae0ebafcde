"""Sequential: a plain stack of layers, each feeding the next — a functional model whose graph
is a chain (built as soon as the input shape is known)."""
from fastnet.layers.base import Layer
from fastnet.layers.core import InputLayer, KerasTensor
from fastnet.models.functional import Functional, _layer_or_model_class, entry_shape_text
from fastnet.models.model import Model


class Sequential(Functional):
    """A linear stack of layers.

    >>> model = Sequential([Conv2D(32, 3, activation="relu", input_shape=(28, 28, 1)),
    ...                     Flatten(), Dense(10, activation="softmax")])
    """

    def __init__(self, layers=None, name=None):
        Model.__init__(self, name=name or "sequential")
        self._layers = []
        self._declared_input = None
        if layers is not None:
            if not isinstance(layers, (list, tuple)):
                raise TypeError(f"Sequential: layers must be a list, got {type(layers).__name__}")
            for layer in layers:
                self.add(layer)

    @property
    def layers(self):
        """The layers, without the input layer (as Keras' Sequential)."""
        return list(self._layers)

    @property
    def output_names(self):
        if self.built:
            return list(self._output_names)
        return [self._layers[-1].name] if self._layers else ["output"]

    def add(self, layer):
        """Append a layer (or an ``Input(shape)`` as the first entry)."""
        if isinstance(layer, KerasTensor):
            layer = layer._keras_history[0]
        if not isinstance(layer, (Layer, Model)):
            raise TypeError(f"Sequential.add: expected a fastnet Layer, model or Input, "
                            f"got {type(layer).__name__}")
        if isinstance(layer, InputLayer):
            if self._layers or self._declared_input is not None:
                raise ValueError("Sequential: an Input can only be the first entry")
            self._declared_input = layer
            return
        if layer.multi_input:
            raise ValueError(f"Sequential.add: {layer.name} takes several inputs; use the "
                             f"functional API (Model(inputs, outputs)) for it")
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

    def build(self, input_shape=None):
        """Create every weight for inputs of ``input_shape`` (batch axis first, may be None;
        other sizes may be None too, e.g. (None, None, 16) for sequences of any length)."""
        if input_shape is None or None not in tuple(input_shape)[1:]:
            return Model.build(self, input_shape)
        self._build_graph(tuple(None if s is None else int(s) for s in tuple(input_shape)[1:]))
        self._bind_flat_buffers()
        self.built = True
        if self.compiled:
            self._configure_loss_path()

    def _summary_rows(self):
        """Keras' Sequential table: no "Connected to"; a nested model is one row."""
        rows = [("Layer (type)", "Output Shape", "Param #")]
        for layer in self._layers:
            rows.append((f"{layer.name} ({type(layer).__name__})", entry_shape_text(layer),
                         str(layer.count_params()) if layer.built else "?"))
        return rows

    def _input_shape_declared(self):
        if self._declared_input is not None:
            return self._declared_input.batch_input_shape
        return self._layers[0].batch_input_shape if self._layers else None

    def _build_graph(self, input_shape):
        """The chain input -> layer 1 -> ... -> layer n as a graph."""
        if not self._layers:
            raise ValueError("Sequential: add at least one layer before building")
        inp = self._declared_input
        if inp is None or inp.batch_input_shape != tuple(input_shape):
            inp = InputLayer(shape=input_shape, dtype=self._layers[0].dtype)
        x = inp.output
        for layer in self._layers:
            x = layer(x)
            if isinstance(x, list):
                raise ValueError(f"Sequential: {layer.name} has several outputs; use the "
                                 f"functional API (Model(inputs, outputs)) for it")
        self._init_graph(inp.output, x)

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
    def from_config(cls, config, custom_objects=None):
        """Rebuild from ``get_config()``; layer classes are looked up among fastnet's own (and
        ``custom_objects``)."""
        from fastnet.utils import serialization as _serial
        model = cls(name=config.get("name"))
        if not isinstance(config.get("layers"), list):
            raise ValueError("Sequential config needs a list of layers")
        for entry in config["layers"]:
            model.add(_serial.deserialize(entry, _layer_or_model_class, (Layer, Model), "layer",
                                          custom_objects))
        if config.get("input_shape") is not None and not model.built:
            model.build((None,) + tuple(config["input_shape"]))
        return model
