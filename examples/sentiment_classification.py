"""Sentiment-style sequence classification on a small generated data set, classifying from h_n.

The "reviews" are sequences of word ids from a vocabulary of positive, negative and neutral words, 4 to 24 words
long; a review is positive when it has more positive than negative words. Each word is a one-hot vector, so the
RNN's input weights learn one embedding per word. The batches mix lengths: ``rnn.forward(x, lengths=...)`` runs
each review only over its own words, and ``h_n`` is each review's state after its last word. A logistic read-out
on ``h_n`` gives the probability of "positive"; the loss is binary cross-entropy; the gradient reaches the RNN as
``grad_h_n`` (the outputs are not used). ``rnnfast.optim.Adam`` updates the model's parameters and the read-out's
arrays in place.

``--cell lstm`` (or ``gru``) classifies with an ``rnnfast.LSTM`` (``GRU``) instead: the LSTM's state is the pair
``(h_n, c_n)``, and its backward takes ``grad_c_n`` too (None here: the read-out uses h alone).

Run: python examples/sentiment_classification.py [--cell rnn|lstm|gru]
"""

import argparse
import time

import numpy as np

import rnnfast

VOCAB = 40
POSITIVE = range(0, 8)    # word ids 0-7 are positive words, 8-15 negative, the rest neutral
NEGATIVE = range(8, 16)
MIN_LEN, MAX_LEN = 4, 24
HIDDEN = 24


def make_reviews(count, rng):
    """(x [MAX_LEN, count, VOCAB] one-hot and zero-padded, lengths [count], labels [count] of 0/1)."""
    x = np.zeros((MAX_LEN, count, VOCAB), np.float32)
    lengths = rng.integers(MIN_LEN, MAX_LEN + 1, count)
    labels = np.zeros(count, np.float32)
    for b in range(count):
        while True:
            words = rng.integers(0, VOCAB, lengths[b])
            score = np.isin(words, POSITIVE).sum() - np.isin(words, NEGATIVE).sum()
            if score != 0:  # no ties
                break
        x[np.arange(lengths[b]), b, words] = 1
        labels[b] = score > 0
    return x, lengths, labels


def last_states(state):
    """h_n of an RNN or GRU, or of an LSTM's (h_n, c_n)."""
    return state[0] if isinstance(state, tuple) else state


def predict(rnn, head, x, lengths):
    """Logits [B] of "positive", from the last layer's state after each review's last word."""
    _, state = rnn(x, lengths=lengths)
    return last_states(state)[-1] @ head["w"] + head["b"]  # h_n: [num_layers, B, H]


def accuracy(rnn, head, x, lengths, labels):
    return float(np.mean((predict(rnn, head, x, lengths) > 0) == (labels > 0.5)))


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--cell", choices=("rnn", "lstm", "gru"), default="rnn", help="the recurrent layer (default rnn)")
args = parser.parse_args()
rnnfast.set_num_threads(1)  # small matrices: one thread is fastest
rng = np.random.default_rng(0)
train_x, train_len, train_y = make_reviews(2000, rng)
test_x, test_len, test_y = make_reviews(500, rng)
print(f"train {train_x.shape[1]} reviews, test {test_x.shape[1]}, lengths {MIN_LEN}-{MAX_LEN}, "
      f"{train_y.mean():.0%} positive")

rnn = {"rnn": rnnfast.RNN, "lstm": rnnfast.LSTM, "gru": rnnfast.GRU}[args.cell](VOCAB, HIDDEN, seed=0)
print(f"model: {rnn!r}")
head = {"w": np.zeros(HIDDEN, np.float32), "b": np.zeros(1, np.float32)}
head_grads = {name: np.zeros_like(p) for name, p in head.items()}
# The model (all its parameters, with the gradients backward adds into rnn.grads) and the read-out's (param, grad)
# pairs: step() updates them all in place.
opt = rnnfast.optim.Adam([rnn, *((head[name], head_grads[name]) for name in head)], lr=0.01)
print(f"chance accuracy: {max(test_y.mean(), 1 - test_y.mean()):.3f}")

start = time.perf_counter()
batch = 50
for epoch in range(12):
    order = rng.permutation(train_x.shape[1])
    losses = []
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        x, lengths, y = np.ascontiguousarray(train_x[:, idx]), train_len[idx], train_y[idx]
        _, state, cache = rnn.forward(x, lengths=lengths, return_cache=True)
        h_n = last_states(state)
        h_last = h_n[-1]                                             # [B, H]
        z = h_last @ head["w"] + head["b"]                           # logits [B]
        p = 1 / (1 + np.exp(-z))
        losses.append(float(np.mean(np.logaddexp(0, z) - y * z)))   # binary cross-entropy with logits
        grad_z = (p - y) / len(y)                                    # d(loss)/d(z)
        grad_h_n = np.zeros_like(h_n)
        grad_h_n[-1] = np.outer(grad_z, head["w"])                   # only the last layer's state is read
        opt.zero_grad()                                              # rnn.grads and head_grads
        rnn.backward(cache, grad_h_n=grad_h_n)                       # BPTT from h_n only (LSTM: grad_c_n None)
        head_grads["w"][...] = h_last.T @ grad_z
        head_grads["b"][...] = grad_z.sum(keepdims=True)
        opt.step()
    if epoch % 3 == 2:
        print(f"epoch {epoch + 1:2d}  loss {np.mean(losses):.4f}  "
              f"test accuracy {accuracy(rnn, head, test_x, test_len, test_y):.3f}")

print(f"trained in {time.perf_counter() - start:.1f} s")
print(f"train accuracy: {accuracy(rnn, head, train_x, train_len, train_y):.3f}")
print(f"test accuracy: {accuracy(rnn, head, test_x, test_len, test_y):.3f}")
