"""Memory, the torch side: fit the cost model of :mod:`fedpilot.planning.costmodel` to measurements
on the real model (``calibrate``, measuring steps with :mod:`fedpilot.runtime.measure`), and check
predictions against measurement (``validate``). The analytic estimate lives with each model family."""
