"""Public ops on NumPy arrays: validate arguments, allocate outputs, call one compiled kernel."""
from fastnet.ops.activations import activation_backward, activation_forward  # noqa: F401,E402
from fastnet.ops.losses import (  # noqa: F401,E402  (before ops.metrics, which it imports)
    binary_crossentropy, categorical_crossentropy, huber, kl_divergence, mean_absolute_error,
    mean_squared_error, softmax_cross_entropy, softmax_crossentropy_fused_grad,
    sparse_categorical_crossentropy)
from fastnet.ops.metrics import (  # noqa: F401,E402
    argmax, categorical_accuracy, confusion_matrix, sparse_accuracy)
from fastnet.ops.optim import (  # noqa: F401,E402
    adagrad_update, adam_update, gradient_clip_scale, rmsprop_update, segment_norms, sgd_update)
from fastnet.ops.matmul import matmul  # noqa: F401,E402
from fastnet.ops.conv import (  # noqa: F401,E402
    conv2d, conv2d_backward_input, conv2d_backward_weight)
from fastnet.ops.pool import (  # noqa: F401,E402
    avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward)
from fastnet.ops.norm import batch_norm_backward, batch_norm_forward  # noqa: F401,E402
from fastnet.ops.dropout import dropout_backward, dropout_forward  # noqa: F401,E402
from fastnet.ops.spatial import (  # noqa: F401,E402
    global_avg_pool2d, global_avg_pool2d_backward, global_max_pool2d, global_max_pool2d_backward,
    zero_pad2d, zero_pad2d_backward)
from fastnet.ops.penalty import weight_penalty, weight_penalty_grad  # noqa: F401,E402
