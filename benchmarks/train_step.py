"""Training-step time of EGT (λ = 0.3) vs λ = 0 vs a plain single-exit CNN, and vs pure PyTorch.

All share the paper's backbone. They are timed side by side in one process,
interleaved round by round so that machine noise hits all of them alike. Targets:
EGT / λ=0 ≤ 1.05 on every backend; on the torch backend, keras-egt's EGT step
≤ 1.15x a hand-written pure-PyTorch implementation of the same network and loss
(`_torch_egt`, the alternative a user would write; timed in the same process on every
backend, so each backend's row has its own side-by-side figure).

    KERAS_BACKEND=jax python benchmarks/train_step.py            # one backend
    python benchmarks/train_step.py --all-backends               # each in a subprocess

Results are merged into benchmarks/results/train_step.json, keyed by backend.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import _common

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "train_step.json")


def _plain_cnn(widths, input_shape, num_classes):
    import keras

    from keras_egt.layers import ConvBlock

    blocks = [ConvBlock(w, pool=k < 4, name=f"block_{k + 1}") for k, w in enumerate(widths)]
    return keras.Sequential(
        [keras.Input(input_shape), *blocks, keras.layers.GlobalAveragePooling2D(),
         keras.layers.Dense(num_classes)],
        name="plain_cnn",
    )


def _torch_egt(widths, input_shape, num_classes, consistency_weight, hidden=None, grid=4):
    """The paper's network and EGT loss in plain PyTorch: `(model, optimizer, step)`.

    Five blocks (3x3 conv without bias, batch norm, ReLU, 2x2 max pooling after
    blocks 1-4); after each block an exit: 1x1 conv to `max(8, C // 8)` channels,
    ReLU, 3x3 conv to one score map, sigmoid gate on the features, adaptive average
    pooling to `grid x grid`, dense. Loss: cross-entropy on every exit plus
    λ (1 - mean cos) between each early exit's spatial-softmax map, resized to the
    final map's size by antialiased bilinear interpolation, and the final map
    (a fixed target). Adam 1e-3. Channels first, as PyTorch code is written.
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Exit(nn.Module):
        def __init__(self, channels):
            super().__init__()
            h = hidden or max(8, channels // 8)
            self.reduce = nn.Conv2d(channels, h, 1)
            self.score = nn.Conv2d(h, 1, 3, padding=1)
            self.classifier = nn.LazyLinear(num_classes)

        def forward(self, f):
            s = self.score(F.relu(self.reduce(f)))
            size = (min(grid, f.shape[2]), min(grid, f.shape[3]))
            pooled = F.adaptive_avg_pool2d(torch.sigmoid(s) * f, size)
            logits = self.classifier(pooled.flatten(1))
            attention = torch.softmax(s.flatten(1), dim=1).view_as(s)
            return logits, attention

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            blocks, c_in = [], input_shape[-1]
            for k, c in enumerate(widths):
                layers = [nn.Conv2d(c_in, c, 3, padding=1, bias=False),
                          nn.BatchNorm2d(c, momentum=0.1), nn.ReLU()]
                if k < len(widths) - 1:
                    layers.append(nn.MaxPool2d(2))
                blocks.append(nn.Sequential(*layers))
                c_in = c
            self.blocks = nn.ModuleList(blocks)
            self.exits = nn.ModuleList(Exit(c) for c in widths)

        def forward(self, x):
            outputs = []
            for block, head in zip(self.blocks, self.exits):
                x = block(x)
                outputs.append(head(x))
            return outputs

    model = Net()
    model(torch.zeros((1, input_shape[-1]) + tuple(input_shape[:2])))  # sizes the LazyLinears
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        outputs = model(x)
        loss = sum(F.cross_entropy(logits, y) for logits, _ in outputs)
        if consistency_weight > 0:
            target = outputs[-1][1].detach().flatten(1)
            cosines = []
            for _, a in outputs[:-1]:
                a = F.interpolate(a, size=outputs[-1][1].shape[2:], mode="bilinear",
                                  align_corners=False, antialias=True).flatten(1)
                cosines.append(F.cosine_similarity(a, target, dim=1, eps=1e-7).mean())
            loss = loss + consistency_weight * (1 - sum(cosines) / len(cosines))
        loss.backward()
        optimizer.step()
        return loss

    return model, optimizer, step


def measure(widths, batch_size, steps, rounds, image_size):
    import keras
    import numpy as np

    import keras_egt as egt

    input_shape = (image_size, image_size, 2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch_size,) + input_shape).astype("float32")
    y = rng.integers(0, 9, size=batch_size)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    models = {
        "egt_lambda_0.3": egt.EarlyExitCNN(9, input_shape, widths=widths, consistency_weight=0.3),
        "lambda_0": egt.EarlyExitCNN(9, input_shape, widths=widths, consistency_weight=0.0),
        "plain_cnn": _plain_cnn(egt.cnn.resolve_widths(widths), input_shape, 9),
    }
    for model in models.values():
        model.compile(keras.optimizers.Adam(1e-3), loss=loss)
        for _ in range(3):  # compile / trace / warm caches
            model.train_on_batch(x, y)
    import torch

    _, _, torch_step = _torch_egt(egt.cnn.resolve_widths(widths), input_shape, 9, 0.3)
    x_torch = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    y_torch = torch.from_numpy(y.astype("int64"))
    for _ in range(3):
        torch_step(x_torch, y_torch)
    steps_of = {name: (lambda model=model: model.train_on_batch(x, y))
                for name, model in models.items()}
    steps_of["pure_pytorch_egt_lambda_0.3"] = lambda: torch_step(x_torch, y_torch)
    times = {name: [] for name in steps_of}
    for _ in range(rounds):
        for name, run in steps_of.items():
            start = time.perf_counter()
            for _ in range(steps):
                run()
            times[name].append((time.perf_counter() - start) / steps)
    median = {name: float(np.median(t)) for name, t in times.items()}
    return {
        "backend": keras.backend.backend(),
        "widths": list(egt.cnn.resolve_widths(widths)),
        "batch_size": batch_size,
        "input_shape": list(input_shape),
        "rounds": rounds,
        "steps_per_round": steps,
        "seconds_per_step": median,
        "egt_over_lambda0": median["egt_lambda_0.3"] / median["lambda_0"],
        "egt_over_plain": median["egt_lambda_0.3"] / median["plain_cnn"],
        "egt_over_pure_pytorch": median["egt_lambda_0.3"] / median["pure_pytorch_egt_lambda_0.3"],
        "torch_threads": torch.get_num_threads(),
        "targets": {"egt_over_lambda0_max": 1.05, "torch_egt_over_pure_pytorch_max": 1.15},
    }


def _merge(result, path=RESULTS):
    data = {}
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
    data[result["backend"]] = result
    _common.write_json(path, data, indent=2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="paper", help='"paper", "micro" or 5 comma-separated ints')
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--all-backends", action="store_true", help="run each backend in a subprocess")
    parser.add_argument("--quick", action="store_true", help="micro widths, 1 step x 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.widths, args.steps, args.rounds = "micro", 1, 2
    if args.all_backends:
        passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--all-backends"]
        for backend in ["tensorflow", "jax", "torch"]:
            env = dict(os.environ, KERAS_BACKEND=backend)
            subprocess.run([sys.executable, os.path.abspath(__file__), *passthrough], env=env, check=True)
        return 0
    import keras_egt as egt

    widths = args.widths if args.widths in egt.WIDTH_PRESETS else egt.cnn.resolve_widths(args.widths)
    result = measure(widths, args.batch_size, args.steps, args.rounds, args.image_size)
    # A smoke run must not overwrite the measured figures.
    _merge(result, RESULTS.replace(".json", "_quick.json") if args.quick else RESULTS)
    s = result["seconds_per_step"]
    print(
        f"{result['backend']}: EGT {1e3 * s['egt_lambda_0.3']:.1f} ms/step, λ=0 {1e3 * s['lambda_0']:.1f}, "
        f"plain {1e3 * s['plain_cnn']:.1f}; EGT/λ=0 = {result['egt_over_lambda0']:.3f}, "
        f"EGT/plain = {result['egt_over_plain']:.3f}, pure PyTorch "
        f"{1e3 * s['pure_pytorch_egt_lambda_0.3']:.1f} ms/step, EGT/pure PyTorch = "
        f"{result['egt_over_pure_pytorch']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
