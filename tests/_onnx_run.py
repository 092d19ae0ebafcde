"""Run an ONNX model in ONNX Runtime on the CPU (shared by the ONNX tests)."""


def run_ort(proto, xs, threads=1):
    """The outputs of the ``onnx.ModelProto`` ``proto`` for the input array(s) ``xs``."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3       # no shape-merge warnings (recurrent ops' outputs)
    sess = ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    xs = xs if isinstance(xs, list) else [xs]
    return sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), xs)})
