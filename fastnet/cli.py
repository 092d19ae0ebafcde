"""The ``fastnet`` command: ``fastnet demo`` trains the classic Keras CNN, ``fastnet info``
reports the build, the CPU and the kernel path in use."""
import argparse
import functools
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
    if gemm.isa() == "avx512":
        print(f"GEMM AVX-512 broadcasts: {gemm.broadcast()} (override with "
              f"FASTNET_GEMM_BROADCAST=memory|register)")
    from fastnet._kernels import int8
    print(f"int8 kernel path: {int8.isa()} (available: {', '.join(int8.available_isas())}; "
          f"override with FASTNET_INT8_ISA)")
    print(f"OpenMP: {'enabled' if config.openmp_enabled() else 'not available (serial build)'}, "
          f"threads: {config.get_num_threads()} (set with fastnet.set_num_threads or "
          f"OMP_NUM_THREADS)")
    return 0


def build_classic_cnn(input_shape=(28, 28, 1), classes=10, augment=None):
    """The classic Keras CNN: 3 convolutions, 2 max-pools, Dense 64, Dense softmax; with
    ``augment`` (a list of fastnet.preprocessing layers) those layers first."""
    from fastnet import layers, models

    model = models.Sequential()
    if augment:   # at the front: active in training only, saved with the model
        model.add(layers.Input(input_shape))
        for layer in augment:
            model.add(layer)
    model.add(layers.Conv2D(32, (3, 3), activation="relu", input_shape=input_shape))
    model.add(layers.MaxPooling2D((2, 2)))
    model.add(layers.Conv2D(64, (3, 3), activation="relu"))
    model.add(layers.MaxPooling2D((2, 2)))
    model.add(layers.Conv2D(64, (3, 3), activation="relu"))
    model.add(layers.Flatten())
    model.add(layers.Dense(64, activation="relu"))
    model.add(layers.Dense(classes, activation="softmax"))
    return model


# fastnet/examples/<name>.py modules, each with a demo(args), and (epochs, batch) defaults
DEMO_EXAMPLES = ("lstm", "resnet")
DEMO_DEFAULTS = {"cnn": (5, 64), "lstm": (10, 32), "resnet": (8, 64)}


def demo(args):
    """Train the classic CNN on the bundled digits and report accuracy and speed."""
    if getattr(args, "model", "cnn") != "cnn":
        import importlib
        return importlib.import_module(f"fastnet.examples.{args.model}").demo(args)
    import fastnet
    from fastnet import datasets
    from fastnet.utils import set_random_seed

    dist, rank = None, 0
    if getattr(args, "distributed", False):
        from fastnet import distributed as dist   # one process per rank, under mpirun
        dist.init()
        rank = dist.rank()
        if rank != 0:   # rank 0 alone reports
            sys.stdout = open(os.devnull, "w")
    if args.threads is not None:
        fastnet.set_num_threads(args.threads)
    set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = datasets.load_digits()
    print(f"fastnet demo: the classic Keras CNN on the bundled MNIST sample "
          f"({len(x_train)} train / {len(x_test)} test images), "
          f"{fastnet.get_num_threads()} thread(s)")
    augment = None
    if getattr(args, "augment", False):   # flip-free: rotation +-10 degrees, shift +-10%
        from fastnet.preprocessing import RandomRotation, RandomTranslation
        augment = [RandomRotation(10 / 360, fill_mode="constant", seed=args.seed),
                   RandomTranslation(0.1, 0.1, fill_mode="constant", seed=args.seed + 1)]
        print("augmentation: RandomRotation(+-10 degrees), RandomTranslation(+-10%)")
    model = build_classic_cnn(x_train.shape[1:], 10, augment=augment)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if args.verbose:
        model.summary()
    if dist is not None:
        print(f"distributed: {dist.size()} MPI ranks x {fastnet.get_num_threads()} thread(s), "
              f"global batch {args.batch_size}")
    fit = model.fit if dist is None else functools.partial(dist.fit, model)
    t0 = time.perf_counter()
    history = fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                  verbose=1 if args.verbose else 0,
                  validation_data=(x_test, y_test) if args.plot else None)
    wall = time.perf_counter() - t0
    loss, acc = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    ips = model._train_samples / model._train_seconds if model._train_seconds else 0.0
    print(f"test loss: {loss:.4f}")
    print(f"test accuracy: {acc:.4f}")
    print(f"training: {ips:,.0f} images/s ({args.epochs} epochs in {wall:.1f} s, "
          f"batch {args.batch_size}, {fastnet.get_num_threads()} thread(s))")
    if args.plot and rank == 0:
        history.plot(args.plot, title="fastnet demo: classic CNN on the bundled digits")
        print(f"loss and accuracy curves written to {args.plot}")
    return 0 if acc >= args.min_accuracy else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastnet", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    p_demo = sub.add_parser("demo", help="train the classic Keras CNN on the bundled digits")
    p_demo.add_argument("--model", default="cnn", choices=("cnn",) + DEMO_EXAMPLES,
                        help="cnn: the classic Keras CNN (default); lstm: an LSTM reading the "
                             "digits row by row; resnet: a small ResNet on the digits padded "
                             "to 32x32 (fastnet/examples/)")
    p_demo.add_argument("--epochs", type=int, default=None,
                        help="default: 5 (cnn), 10 (lstm), 8 (resnet)")
    p_demo.add_argument("--batch-size", type=int, default=None,
                        help="default: 64 (cnn), 32 (lstm), 64 (resnet)")
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
    p_demo.add_argument("--augment", action="store_true",
                        help="train with RandomRotation(+-10 degrees) and "
                             "RandomTranslation(+-10%%) layers in front of the CNN "
                             "(default 10 epochs)")
    p_demo.add_argument("--distributed", action="store_true",
                        help="data-parallel over MPI ranks: mpirun -n 2 fastnet demo "
                             "--distributed (needs fastnet[mpi])")
    sub.add_parser("info", help="version, CPU features, kernel path and threads")
    p_quant = sub.add_parser("quantize", help="int8 post-training quantization of a saved model")
    p_quant.add_argument("model", help="a model file written by model.save")
    p_quant.add_argument("out", help="where to write the quantized model")
    p_quant.add_argument("--calibration", metavar="NPY", default=None,
                         help="calibration samples (.npy; default for 28x28x1 inputs: the "
                              "bundled MNIST training images)")
    p_quant.add_argument("--samples", type=int, default=500, help="calibration samples to use")
    p_quant.add_argument("--method", choices=("minmax", "percentile"), default="minmax")
    p_quant.add_argument("--percentile", type=float, default=99.99)
    p_quant.add_argument("--batch-size", type=int, default=64)
    p_export = sub.add_parser("export", help="convert a saved model to ONNX (needs "
                                             "fastnet[onnx])")
    p_export.add_argument("model", help="a model file written by model.save")
    p_export.add_argument("out", help="the .onnx file to write")
    p_export.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 13; default 17)")
    from fastnet.bench.command import add_arguments as bench_arguments
    p_bench = bench_arguments(sub.add_parser(
        "bench", help="compare fastnet with NumPy, PyTorch and ONNX Runtime on this machine"))
    args = parser.parse_args(argv)
    if args.command == "demo":
        epochs, batch = DEMO_DEFAULTS.get(args.model, DEMO_DEFAULTS["cnn"])
        if args.augment:
            if args.model != "cnn":
                parser.error("--augment applies to the classic CNN (--model cnn)")
            epochs = 10   # augmented data take more passes (>= 0.96 on the bundled test split)
        args.epochs = epochs if args.epochs is None else args.epochs
        args.batch_size = batch if args.batch_size is None else args.batch_size
        if args.epochs < 1 or args.batch_size < 1 or (args.threads is not None and args.threads < 1):
            parser.error("--epochs, --batch-size and --threads must be >= 1")
        return demo(args)
    if args.command == "info":
        return info(args)
    if args.command == "quantize":
        if args.samples < 1 or args.batch_size < 1:
            parser.error("--samples and --batch-size must be >= 1")
        from fastnet.quantization import cli_main as quantize_main
        return quantize_main(args)
    if args.command == "export":
        from fastnet.onnx._export import cli_main as export_main
        return export_main(args)
    if args.command == "bench":
        from fastnet.bench.command import run_command
        return run_command(args, p_bench)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
