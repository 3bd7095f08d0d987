"""CLIP: a contrastive image-text dual encoder (ViT image tower, Transformer text tower)
on the shared blocks; the re-ranking scorer of Parti and the embedding space of unCLIP.

`model` (the network and its sizes), `task` (training, retrieval over a split),
`scorer` (`ImageTextScorer`, `CLIPScorer`); `python -m t2i.clip` measures retrieval.
"""
