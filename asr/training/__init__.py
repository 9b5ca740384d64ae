"""Training with PyTorch Lightning: the LightningModule (`system`), the LightningDataModule
(`datamodule`), `train` (tokenizer, trainer, checkpoint averaging, `model.pt` export), the
progress bar and atomic checkpoint IO. The only part of the package that imports Lightning."""
