"""One training step of the classic Keras CNN (28x28x1, Adam, sparse categorical
cross-entropy), images/s: fastnet ``train_on_batch`` against the same network, weights and batch
in PyTorch (zero_grad, forward, cross-entropy, backward, Adam step)."""
from fastnet.bench.cases import Bench, Case
from fastnet.bench.suites import cnn

SUITE = "train"
LIBRARIES = ("fastnet", "torch")
BATCHES = (64,)


def cases(batches=None):
    return [Case(SUITE, "classic CNN step", f"{b}x28x28x1, Adam", float(b), "images/s",
                 params=(b,), batch=b, quick=True) for b in (batches or BATCHES)]


def fastnet_step(batch):
    model = cnn.fastnet_model()
    x, y = cnn.batch_data(batch)
    return lambda: model.train_on_batch(x, y)


def torch_step(batch, channels_last=False, fused_adam=False):
    import torch
    net = cnn.torch_net(cnn.fastnet_model().get_weights())
    x, y = cnn.batch_data(batch)
    xt, yt = cnn.to_torch(x, channels_last), torch.from_numpy(y)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7, fused=True if fused_adam else None)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xt), yt)
        loss.backward()
        opt.step()
        return loss.detach()
    return step


def make(case, config, ctx):
    (batch,) = case.params
    if config.library == "fastnet":
        fn = fastnet_step(batch)
    elif config.library == "torch":
        fn = torch_step(batch, config.option("channels_last"), config.option("fused_adam"))
    else:
        return None
    # the first step's loss: same weights and batch, so every library must agree
    return Bench(fn, lambda: [float(fn())])
