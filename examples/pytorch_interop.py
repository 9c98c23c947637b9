"""Weights trained in PyTorch, loaded into rnnfast, trained further, and exported back.

rnnfast's RNN / RNNCell have torch.nn.RNN / torch.nn.RNNCell's parameter names, shapes and semantics, so a state
dict moves both ways with one conversion per array: ``tensor.detach().numpy()`` in, ``torch.from_numpy`` out.
Needs torch (``pip install torch``); without it this script says so and exits with status 0.

Run: python examples/pytorch_interop.py
"""

import sys

import numpy as np

import rnnfast

try:
    import torch
except ImportError:
    print("torch is not installed: skipping the PyTorch interoperability example (pip install torch)")
    sys.exit(0)

torch.manual_seed(0)
torch.set_num_threads(1)
rnnfast.set_num_threads(1)

# 1. Train a two-layer nn.RNN with a linear read-out in PyTorch: predict the next value of a sine wave.
t = np.linspace(0, 12 * np.pi, 301, dtype=np.float32)
wave = np.sin(t)[None, :, None]                        # [B=1, T+1, 1], batch_first
x, y = wave[:, :-1], wave[:, 1:]
net = torch.nn.RNN(input_size=1, hidden_size=16, num_layers=2, batch_first=True)
read_out = torch.nn.Linear(16, 1)
opt = torch.optim.Adam([*net.parameters(), *read_out.parameters()], lr=0.01)
losses = []
for step in range(60):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(read_out(net(torch.from_numpy(x))[0]), torch.from_numpy(y))
    loss.backward()
    opt.step()
    losses.append(loss.item())
print(f"PyTorch training (60 Adam steps): MSE {losses[0]:.5f} -> {losses[-1]:.5f}")

# 2. Load the trained weights into rnnfast: the same outputs.
rnn = rnnfast.RNN(input_size=1, hidden_size=16, num_layers=2, batch_first=True)
rnn.load_state_dict({name: tensor.detach().numpy() for name, tensor in net.state_dict().items()})
w = read_out.weight.detach().numpy().T.copy()            # [16, 1]
b = read_out.bias.detach().numpy().copy()                # [1]
out, h_n = rnn(x)
with torch.no_grad():
    t_out, t_h_n = net(torch.from_numpy(x))
print(f"torch -> rnnfast: max |output difference| {np.abs(out - t_out.numpy()).max():.1e}, "
      f"max |h_n difference| {np.abs(h_n - t_h_n.numpy()).max():.1e}")

# 3. The gradients of the same loss agree too (PyTorch's autograd against rnnfast's BPTT).
net.zero_grad()
t_pred = read_out(net(torch.from_numpy(x))[0])
torch.nn.functional.mse_loss(t_pred, torch.from_numpy(y)).backward()
out, h_n, cache = rnn.forward(x, return_cache=True)
diff = out @ w + b - y
grad_pred = 2 * diff / diff.size
rnn.zero_grad()
rnn.backward(cache, grad_output=grad_pred @ w.T)
worst = max(np.abs(rnn.grads[name] - p.grad.numpy()).max() for name, p in net.named_parameters())
print(f"gradients: max |difference| {worst:.1e} over {len(rnn.grads)} parameters")

# 4. Fine-tune in rnnfast (plain SGD, in place), then export back to PyTorch.
mse_before = float(np.mean(diff ** 2))
for step in range(100):
    out, _, cache = rnn.forward(x, return_cache=True)
    diff = out @ w + b - y
    grad_pred = 2 * diff / diff.size
    rnn.zero_grad()
    rnn.backward(cache, grad_output=grad_pred @ w.T)
    for name, p in rnn.named_parameters().items():
        p -= 0.05 * rnn.grads[name]
print(f"rnnfast fine-tuning (100 SGD steps): MSE {mse_before:.5f} -> {float(np.mean(diff ** 2)):.5f}")
net.load_state_dict({name: torch.from_numpy(value) for name, value in rnn.state_dict().items()})
out, _ = rnn(x)
with torch.no_grad():
    t_out, _ = net(torch.from_numpy(x))
print(f"rnnfast -> torch: max |output difference| {np.abs(out - t_out.numpy()).max():.1e}")

# 5. RNNCell: the same both ways.
torch_cell = torch.nn.RNNCell(8, 4, nonlinearity="relu")
cell = rnnfast.RNNCell(8, 4, nonlinearity="relu")
cell.load_state_dict({name: tensor.detach().numpy() for name, tensor in torch_cell.state_dict().items()})
xc = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
with torch.no_grad():
    expected = torch_cell(torch.from_numpy(xc)).numpy()
print(f"RNNCell torch -> rnnfast: max |difference| {np.abs(cell(xc) - expected).max():.1e}")
torch_cell.load_state_dict({name: torch.from_numpy(value) for name, value in cell.state_dict().items()})
print("state dict keys:", ", ".join(cell.state_dict()))
