"""nets: the 2D networks (floor 4; imports settings, io; the first floor that imports Keras).

Owns the three backbones (:mod:`~innerear.nets.backbones`: U-Net, ResU-Net, SE-U-Net), the
losses saved with them (:mod:`~innerear.nets.losses`), loading saved networks safely
(:mod:`~innerear.nets.checkpoints`) and the backend's seeds and threads
(:mod:`~innerear.nets.backend`)."""
