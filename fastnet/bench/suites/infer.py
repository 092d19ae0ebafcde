"""Inference with the classic Keras CNN, images/s, at batch 1 (latency) and batch 64:
fastnet ``model.predict`` against PyTorch (``torch.inference_mode``, the same weights) and ONNX
Runtime running the model exported to ONNX (see ``cnn.export_onnx``)."""
import numpy as np

from fastnet.bench.cases import Bench, Case, checksum
from fastnet.bench.suites import cnn

SUITE = "infer"
LIBRARIES = ("fastnet", "torch", "onnxruntime")
BATCHES = (1, 64)
NEEDS_ONNX = True


def cases(batches=None):
    return [Case(SUITE, "classic CNN predict", f"{b}x28x28x1", float(b), "images/s",
                 params=(b,), batch=b, quick=True) for b in (batches or BATCHES)]


def fastnet_predict(batch):
    model = cnn.fastnet_model()
    x, _ = cnn.batch_data(batch)
    return lambda: model.predict(x, batch_size=batch, verbose=0)


def torch_predict(batch, channels_last=False):
    import torch
    net = cnn.torch_net(cnn.fastnet_model().get_weights(), softmax=True).eval()
    xt = cnn.to_torch(cnn.batch_data(batch)[0], channels_last)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode():
            return net(xt)
    return run


def ort_session(path, threads, denormal_as_zero=False):
    """An InferenceSession on the CPU with ``threads`` intra-op threads (read back by the
    worker) and one inter-op thread."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if denormal_as_zero:
        so.add_session_config_entry("session.set_denormal_as_zero", "1")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _input_for(session, x):
    """x (NHWC) in the layout the graph takes: NHWC from fastnet's exporter, NCHW from
    PyTorch's."""
    shape = session.get_inputs()[0].shape
    return np.ascontiguousarray(x if list(shape[1:]) == list(x.shape[1:])
                                else x.transpose(0, 3, 1, 2))


def ort_predict(path, batch, threads, io_binding=False, denormal_as_zero=False):
    """(run, session): ``run()`` returns the probabilities."""
    import onnxruntime as ort
    sess = ort_session(path, threads, denormal_as_zero)
    x = _input_for(sess, cnn.batch_data(batch)[0])
    name, out_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    if not io_binding:
        return (lambda: sess.run([out_name], {name: x})[0]), sess
    out = np.empty((batch, cnn.CLASSES), np.float32)
    binding = sess.io_binding()
    binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x))
    binding.bind_ortvalue_output(out_name, ort.OrtValue.ortvalue_from_numpy(out))

    def run():
        sess.run_with_iobinding(binding)
        return out
    return run, sess


def make(case, config, ctx):
    (batch,) = case.params
    if config.library == "fastnet":
        fn = fastnet_predict(batch)
    elif config.library == "torch":
        fn = torch_predict(batch, config.option("channels_last"))
    elif config.library == "onnxruntime":
        fn, sess = ort_predict(cnn.onnx_path(ctx.workdir), batch, ctx.threads,
                               config.option("io_binding"), config.option("denormal_as_zero"))
        ctx.sessions.append(sess)   # the worker reads the thread settings back from it
    else:
        return None
    return Bench(fn, lambda: checksum(np.asarray(fn())))
