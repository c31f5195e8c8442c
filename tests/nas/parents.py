"""The static vit that the warm-start and inheritance tests start from (conftest's
``parent_export``: trained one epoch on 300 Fashion-MNIST images)."""

from search_spaces.vit import ViTConfig

PARENT = ViTConfig(img_size=28, patch_size=7, embed_dim=48, depth=2, num_heads=2)
