"""StarGAN (Choi et al. 2018): the networks, the training loop and the translation grids."""
