"""demo-shapes: the farm's own toy text-to-image model, and everything that made and checks it.

`data` draws the training images (flat shapes on flat backgrounds) with their prompts, `train`
trains an SD-1.5-format pipeline on them, `judge` reads an image back (shape colour, background
colour, rough shape), and `evaluate` renders a fixed set of prompts and scores them. The trained
weights live in farm/models/demo-shapes/.
"""
