"""Backpropagation worked by hand: the 2-2-2 sigmoid network of Matt Mazur's "A Step by Step
Backpropagation Example", traced through one SGD step in float64.

    python examples/backprop_by_hand.py [--plot trace.png]

Mazur's network: inputs 0.05, 0.10; targets 0.01, 0.99; weights w1…w8 = .15 .20 .25 .30 .40
.45 .50 .55; biases .35 (hidden) and .60 (output); learning rate 0.5. Two differences with
chainrule, both said here so the numbers can be compared:

- chainrule's Dense has one bias per unit, so both units of a layer get the same bias
  (Mazur's shared b1, b2); chainrule also *updates* the biases, which Mazur leaves fixed.
- chainrule's "mse" is the MEAN over outputs and batch of (t − o)², Mazur's error is
  Σ ½ (t − o)². In general ∂L/∂o = 2(o − t)/n against Mazur's (o − t), a factor 2/n; with
  n = 2 outputs and one example that factor is exactly 1, so the loss (0.298371109) and every
  gradient coincide with his (e.g. ∂E/∂w5 = 0.082167041, w5⁺ = 0.35891648, w1⁺ = 0.149780716).

Keras layout: a Dense kernel is (inputs, units), so h1 = w1·i1 + w2·i2 puts w1, w2 in column 0.
"""

import argparse

import numpy as np

import chainrule as cr

X = np.array([[0.05, 0.10]])
T = np.array([[0.01, 0.99]])
HIDDEN_KERNEL = np.array([[0.15, 0.25],     # [[w1, w3],
                          [0.20, 0.30]])    #  [w2, w4]]
OUTPUT_KERNEL = np.array([[0.40, 0.50],     # [[w5, w7],
                          [0.45, 0.55]])    #  [w6, w8]]
HIDDEN_BIAS = np.array([0.35, 0.35])
OUTPUT_BIAS = np.array([0.60, 0.60])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plot", default=None, help="also draw the trace into this PNG (needs matplotlib)")
    args = p.parse_args()

    model = cr.Sequential([cr.layers.Dense(2, activation="sigmoid", input_shape=(2,)),
                           cr.layers.Dense(2, activation="sigmoid")], dtype="float64")
    model.build((2,))
    model.compile(optimizer=cr.optimizers.SGD(learning_rate=0.5), loss="mse")
    model.set_weights([HIDDEN_KERNEL, HIDDEN_BIAS, OUTPUT_KERNEL, OUTPUT_BIAS])

    trace = model.trace(X, T)          # one forward + backward pass; the weights are not changed
    print(trace)
    if args.plot:
        trace.plot(args.plot)
        print(f"\nwrote {args.plot}")

    model.train_on_batch(X, T)         # the SGD step the trace's "Updates" section announced
    print("\nWeights after one SGD step (Mazur: w5⁺ = 0.35891648, w1⁺ = 0.149780716):")
    names = ["hidden kernel [[w1, w3], [w2, w4]]", "hidden bias", "output kernel [[w5, w7], [w6, w8]]",
             "output bias"]
    with np.printoptions(precision=9, suppress=True):
        for name, w in zip(names, model.get_weights()):
            print(f"  {name:<36} {w}".replace("\n", "\n" + " " * 39))


if __name__ == "__main__":
    main()
