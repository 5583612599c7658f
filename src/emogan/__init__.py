"""emogan: photos of people -> emotion dataset -> StarGAN."""
