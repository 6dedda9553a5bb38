"""What a curious server can learn from the split traffic it legitimately receives.

``inversion``: reconstruct the client's inputs from the activations it sends up (exact least
squares where the client's head is affine in its input, optimisation otherwise). ``labels``:
infer the client's labels from the gradients its tail sends up. ``metrics``: PSNR and SSIM
(scikit-image) and label-inference scores against a chance baseline. ``decoders``: the learned
attacks (patch decoder, token probe) and nearest-embedding token recovery. ``audit``: ``fedft
privacy RUN_DIR``, which replays a run's traffic and runs all of them (``images`` for the image
attacks, ``common`` for what they share, ``report`` for the table and the PNG grid).
"""

from fedft.privacy.inversion import AffineInverse, optimise_inverse
from fedft.privacy.labels import cluster_labels, known_tail_labels, norm_scores
from fedft.privacy.metrics import image_scores, label_scores

__all__ = ["AffineInverse", "cluster_labels", "image_scores", "known_tail_labels", "label_scores",
           "norm_scores", "optimise_inverse"]
