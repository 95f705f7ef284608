"""Memory, the torch side: measure a training step's real peak (``measure``), fit the cost model of
:mod:`fedpilot.planning.costmodel` to measurements on the real model (``calibrate``), and check
predictions against measurement (``validate``). The analytic estimate lives with each model family."""
