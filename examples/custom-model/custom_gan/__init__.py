"""An example gan-dist plug-in: a small ResNet G and D (custom_gan.models) and the
relativistic standard GAN loss (custom_gan.losses), registered as the entry points
`custom-resnet` and `custom-rsgan` in this folder's pyproject.toml."""
