"""Public ops on NumPy arrays: validate arguments, allocate outputs, call one compiled kernel."""
from fastnet.ops.activations import activation_backward, activation_forward  # noqa: F401,E402
from fastnet.ops.losses import (  # noqa: F401,E402
    categorical_accuracy, categorical_crossentropy, mean_squared_error, softmax_cross_entropy,
    softmax_crossentropy_fused_grad, sparse_accuracy, sparse_categorical_crossentropy)
from fastnet.ops.optim import adam_update, sgd_update  # noqa: F401,E402
from fastnet.ops.matmul import matmul  # noqa: F401,E402
from fastnet.ops.conv import (  # noqa: F401,E402
    conv2d, conv2d_backward_input, conv2d_backward_weight)
from fastnet.ops.pool import (  # noqa: F401,E402
    avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward)
