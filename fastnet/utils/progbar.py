"""A Keras-style progress bar, redrawn at most every 50 ms so it costs nothing per step."""
import sys
import time


class Progbar:
    """Progress over ``target`` steps; ``update(step, values)`` with values a list of (name, v).

    verbose=1 draws a live bar; verbose=2 prints one line when the target is reached.
    """

    def __init__(self, target, verbose=1, width=30, stream=None, interval=0.05):
        self.target, self.verbose, self.width = target, verbose, width
        self.stream = stream if stream is not None else sys.stdout
        self.interval = interval
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._dynamic = hasattr(self.stream, "isatty") and self.stream.isatty()

    def _values_text(self, values):
        parts = []
        for name, value in values:
            if getattr(value, "ndim", 0):  # per-class metrics: show their mean
                value = float(value.mean()) if value.size else float("nan")
                name = f"{name} (mean)"
            parts.append(f" - {name}: {value:.4f}")
        return "".join(parts)

    def update(self, step, values=(), finalize=False):
        """Redraw the bar at ``step`` (1-based) with the given (name, value) pairs."""
        if self.verbose == 0:
            return
        now = time.perf_counter()
        done = finalize or step >= self.target
        if not done and (self.verbose != 1 or now - self._last_draw < self.interval):
            return
        self._last_draw = now
        elapsed = now - self.start
        if self.verbose == 2 and not done:
            return
        n = len(str(self.target))
        filled = int(self.width * step / max(self.target, 1))
        bar = "=" * max(filled - 1, 0) + (">" if step < self.target else "=") if filled else ""
        bar = f"[{bar:<{self.width}}]"
        per_step = elapsed / max(step, 1)
        if done:
            timing = f" {elapsed:.1f}s {per_step * 1e3:.0f}ms/step"
        else:
            timing = f" ETA: {per_step * (self.target - step):.0f}s"
        line = f"{step:>{n}}/{self.target} {bar}{timing}{self._values_text(values)}"
        if self.verbose == 2:
            line = f"{step}/{self.target} - {elapsed:.1f}s{self._values_text(values)}"
        if self._dynamic or done:
            end = "\n" if done else ""
            prefix = "\r" if self._dynamic else ""
            self.stream.write(f"{prefix}{line}\x1b[K{end}" if self._dynamic else f"{line}{end}")
            self.stream.flush()
        elif self.verbose == 1 and not self._dynamic:
            pass  # not a terminal: only the final line of each epoch is printed
