"""resnet_jax: residual networks in JAX/Flax.

ResNet (He et al. 2015, arXiv:1512.03385), pre-activation ResNet (He et al. 2016,
arXiv:1603.05027) and Wide ResNet (Zagoruyko & Komodakis 2016, arXiv:1605.07146).
"""

__version__ = "0.1.0"
