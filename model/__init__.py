"""The S3-DiT transformer (state-dict compatible with diffusers' ZImageTransformer2DModel),
encoders and the flow-matching sampler (issues 8-9).
"""
