"""Building an image: spec -> units -> closure -> layout (the image tree) -> writers.

:mod:`.pipeline` runs the steps in order.
"""
