"""Knowledge distillation (Hinton et al. 2015), as the Keras ``Distiller`` example.

A ``Distiller`` trains a small *student* to match a trained *teacher*: each step minimizes

    alpha * student_loss(y, student(x))
        + (1 - alpha) * distillation_loss(softmax(teacher(x) / T), softmax(student(x) / T)) * T^2

with the teacher frozen (run in inference mode) and only the student's weights updated.  The
T^2 keeps the soft term's gradient on the scale of the hard one as T grows.  The default
``distillation_loss_fn`` is ``KLDivergence`` (Keras's, clipped to [1e-7, 1]).

``teacher(x)`` and ``student(x)`` above are logits.  A model whose last layer is a softmax
has its probabilities p taken back to logits as log p (softmax(log p / T) == softmax(z / T));
a student ending in a softmax needs a cross-entropy ``student_loss_fn`` (fused with the softmax,
so its gradient is with respect to the logits, as the soft term's), a student ending in logits
a ``from_logits=True`` loss.

The Distiller is a functional model over the student's own layers: ``fit``, ``evaluate``
(the student's loss and metrics on (x, y)) and ``predict`` (the student's outputs) work as for
any model, and the trained weights are the student's.

>>> distiller = Distiller(student, teacher, temperature=5, alpha=0.1)
>>> distiller.compile(optimizer="adam", metrics=["accuracy"],
...                   student_loss_fn="sparse_categorical_crossentropy")
>>> distiller.fit(x_train, y_train, epochs=3)
>>> student.evaluate(x_test, y_test)
"""
import numbers

import numpy as np

from fastnet import losses as losses_mod
from fastnet.models.functional import Functional
from fastnet.ops.activations import activation_forward

__all__ = ["Distiller"]


def _check_temperature(t):
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or not (np.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {t!r}")
    return float(t)


def _check_alpha(a):
    if isinstance(a, bool) or not isinstance(a, numbers.Real) or not 0.0 <= a <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {a!r}")
    return float(a)


def _ends_in_softmax(model):
    return getattr(model.layers[-1], "activation", None) == "softmax"


class Distiller(Functional):
    """Trains ``student`` (built) to match ``teacher`` (built, same input shape, same number of
    classes); see the module docstring.  ``temperature`` and ``alpha`` (weight of the student's
    own loss) may also be given to ``compile``, as in the Keras example (defaults 3 and 0.1).
    """

    def __init__(self, student, teacher, temperature=3.0, alpha=0.1, name=None):
        for model, what in ((student, "student"), (teacher, "teacher")):
            if not isinstance(model, Functional):
                raise TypeError(f"{what} must be a fastnet model (Sequential or functional), "
                                f"got {type(model).__name__}")
            if not model.built:
                raise ValueError(f"{what} is not built yet; build or fit it first")
            if len(model.outputs) != 1 or len(model.inputs) != 1:
                raise ValueError(f"{what} must have one input and one output")
        if student.input_shape != teacher.input_shape:
            raise ValueError(f"student and teacher take different inputs: "
                             f"{student.input_shape} vs {teacher.input_shape}")
        if student.output_shape != teacher.output_shape or len(student.output_shape) != 2:
            raise ValueError(f"student and teacher must output the same (batch, classes) "
                             f"scores, got {student.output_shape} and {teacher.output_shape}")
        if any(layer is t for layer in student.layers for t in teacher.layers
               if type(layer).__name__ != "InputLayer"):
            raise ValueError("student and teacher share layers; distill into separate models")
        self.student, self.teacher = student, teacher
        self.temperature = _check_temperature(temperature)
        self.alpha = _check_alpha(alpha)
        self.distillation_loss_fn = None
        self.last_student_loss = self.last_distillation_loss = None
        self._soft = {}
        super().__init__(student.inputs, student.outputs, name=name or "distiller")

    def compile(self, optimizer="adam", metrics=None, student_loss_fn=None,
                distillation_loss_fn=None, alpha=None, temperature=None):
        """As the Keras example: the optimizer (for the student's weights), metrics (on the
        student's outputs), the student's loss against y, the distillation loss between the
        softened teacher and student distributions (default KLDivergence), alpha and T."""
        if student_loss_fn is None:
            raise ValueError("compile: student_loss_fn is required, e.g. "
                             "'sparse_categorical_crossentropy'")
        if alpha is not None:
            self.alpha = _check_alpha(alpha)
        if temperature is not None:
            self.temperature = _check_temperature(temperature)
        self.distillation_loss_fn = losses_mod.get(distillation_loss_fn or "kl_divergence")
        super().compile(optimizer=optimizer, loss=student_loss_fn, metrics=metrics)
        if _ends_in_softmax(self.student) and not self._fused_softmax[0]:
            raise ValueError(f"compile: the student ends in a softmax, so student_loss_fn must "
                             f"be a cross-entropy on probabilities (fused with the softmax), got "
                             f"{type(self._losses[0]).__name__}; or end the student in logits "
                             f"and use from_logits=True")

    # -- the step ---------------------------------------------------------------------------
    def _buffer(self, key, shape, dtype):
        buf = self._soft.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._soft[key] = np.empty(shape, dtype)
        return buf

    def _softened(self, key, out, probabilities):
        """softmax(logits / T) of a batch of outputs (logits, or probabilities: log p)."""
        z = self._buffer((key, "z"), out.shape, out.dtype)
        if probabilities:
            with np.errstate(divide="ignore"):
                np.log(out, out=z)       # p == 0 gives -inf: weight 0 after the softmax
        else:
            np.copyto(z, out)
        np.multiply(z, z.dtype.type(1.0 / self.temperature), out=z)
        return activation_forward("softmax", z, out=self._buffer((key, "p"), out.shape,
                                                                 out.dtype))

    def _train_step(self, xs, ys, ws=None):
        if not isinstance(xs, list):
            xs, ys, ws = [xs], [ys], [ws]
        teacher_out = self.teacher._forward_list(xs, training=False)[0]
        p_teacher = self._softened("teacher", teacher_out, _ends_in_softmax(self.teacher))
        outs = self._forward_list(xs, training=True)
        out = outs[0]
        student_loss, grads = self._losses_grads(outs, ys, ws)
        grad = grads[0]          # dL_student / d(student logits): from_logits or fused softmax
        p_student = self._softened("student", out, _ends_in_softmax(self.student))
        t = self.temperature
        # distillation term: D = T^2 * loss(p_teacher, p_student), p_student = softmax(z / T);
        # dD/dz = T * p_s * (g - sum(g * p_s)) with g = dloss/dp_s (the softmax Jacobian / T)
        g = self._buffer("g", out.shape, out.dtype)
        kwargs = {} if ws[0] is None else {"sample_weight": ws[0]}
        soft_loss = float(self.distillation_loss_fn.compute(p_student, p_teacher, g, **kwargs))
        dot = np.einsum("ij,ij->i", g, p_student)[:, None]
        np.subtract(g, dot, out=g)
        np.multiply(g, p_student, out=g)
        a = self.alpha
        np.multiply(grad, grad.dtype.type(a), out=grad)
        g *= g.dtype.type((1.0 - a) * t)
        grad += g
        self._backward_list([grad])
        n = self._n_trainable
        self.optimizer.apply(self._flat_params[:n], self._flat_grads[:n], self._segments)
        self._update_metrics(self._output_metrics, ys, outs, ws)
        self.last_student_loss, self.last_distillation_loss = student_loss, soft_loss * t * t
        return a * student_loss + (1.0 - a) * soft_loss * t * t + self._regularization_loss()

    def get_config(self):
        raise TypeError("a Distiller is not saved itself: save its student "
                        "(distiller.student.save(path)) and, if needed, the teacher")

    def save(self, filepath):
        self.get_config()
