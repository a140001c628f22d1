"""The thin HTTP layer: validate, insert batch rows, read status rows, stream events. It never runs sync code."""
