"""Detection ops on top of torchvision.ops: box coding, matching, sampling, RoI pooling, masks."""
