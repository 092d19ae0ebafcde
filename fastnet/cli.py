"""The ``fastnet`` command: ``fastnet demo`` trains the classic Keras CNN, ``fastnet info``
reports the build, the CPU and the kernel path in use."""
import argparse
import os
import platform
import sys
import time


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags():
    wanted = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw",
              "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile", "neon", "asimd")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def info(_args=None):
    """Print the version, CPU features, kernel path and thread count."""
    import numpy as np

    import fastnet
    from fastnet import config
    from fastnet._kernels import gemm

    print(f"fastnet {fastnet.__version__} (Python {platform.python_version()}, "
          f"NumPy {np.__version__})")
    print(f"CPU: {_cpu_model()} ({platform.machine()}), {os.cpu_count()} logical cores")
    print(f"CPU features: {' '.join(_cpu_flags()) or 'unknown'}")
    print(f"GEMM kernel path: {gemm.isa()} (available: {', '.join(gemm.available_isas())}; "
          f"override with FASTNET_ISA)")
    print(f"OpenMP: {'enabled' if config.openmp_enabled() else 'not available (serial build)'}, "
          f"threads: {config.get_num_threads()} (set with fastnet.set_num_threads or "
          f"OMP_NUM_THREADS)")
    return 0


def build_classic_cnn(input_shape=(28, 28, 1), classes=10):
    """The classic Keras CNN: 3 convolutions, 2 max-pools, Dense 64, Dense softmax."""
    from fastnet import layers, models

    model = models.Sequential()
    model.add(layers.Conv2D(32, (3, 3), activation="relu", input_shape=input_shape))
    model.add(layers.MaxPooling2D((2, 2)))
    model.add(layers.Conv2D(64, (3, 3), activation="relu"))
    model.add(layers.MaxPooling2D((2, 2)))
    model.add(layers.Conv2D(64, (3, 3), activation="relu"))
    model.add(layers.Flatten())
    model.add(layers.Dense(64, activation="relu"))
    model.add(layers.Dense(classes, activation="softmax"))
    return model


def demo(args):
    """Train the classic CNN on the bundled digits and report accuracy and speed."""
    import fastnet
    from fastnet import datasets
    from fastnet.utils import set_random_seed

    if args.threads is not None:
        fastnet.set_num_threads(args.threads)
    set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = datasets.load_digits()
    print(f"fastnet demo: the classic Keras CNN on the bundled MNIST sample "
          f"({len(x_train)} train / {len(x_test)} test images), "
          f"{fastnet.get_num_threads()} thread(s)")
    model = build_classic_cnn(x_train.shape[1:], 10)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if args.verbose:
        model.summary()
    t0 = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                        verbose=1 if args.verbose else 0,
                        validation_data=(x_test, y_test) if args.plot else None)
    wall = time.perf_counter() - t0
    loss, acc = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    ips = model._train_samples / model._train_seconds if model._train_seconds else 0.0
    print(f"test loss: {loss:.4f}")
    print(f"test accuracy: {acc:.4f}")
    print(f"training: {ips:,.0f} images/s ({args.epochs} epochs in {wall:.1f} s, "
          f"batch {args.batch_size}, {fastnet.get_num_threads()} thread(s))")
    if args.plot:
        history.plot(args.plot, title="fastnet demo: classic CNN on the bundled digits")
        print(f"loss and accuracy curves written to {args.plot}")
    return 0 if acc >= args.min_accuracy else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastnet", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    p_demo = sub.add_parser("demo", help="train the classic Keras CNN on the bundled digits")
    p_demo.add_argument("--epochs", type=int, default=5)
    p_demo.add_argument("--batch-size", type=int, default=64)
    p_demo.add_argument("--threads", type=int, default=None,
                        help="OpenMP threads (default: the cores this process may use)")
    p_demo.add_argument("--seed", type=int, default=0)
    p_demo.add_argument("--min-accuracy", type=float, default=0.0,
                        help="exit with status 1 if the test accuracy is lower")
    p_demo.add_argument("--plot", metavar="PNG", default=None,
                        help="write the loss/accuracy curves (training and test) to this PNG "
                             "(needs matplotlib)")
    p_demo.add_argument("--quiet", dest="verbose", action="store_false",
                        help="no summary and no progress bar")
    sub.add_parser("info", help="version, CPU features, kernel path and threads")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.epochs < 1 or args.batch_size < 1 or (args.threads is not None and args.threads < 1):
            parser.error("--epochs, --batch-size and --threads must be >= 1")
        return demo(args)
    if args.command == "info":
        return info(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
