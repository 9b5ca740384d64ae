"""Training with PyTorch Lightning: the LightningModule (`system`), the LightningDataModule
(`datamodule`), `train` (tokenizer, trainer, checkpoint averaging, `model.pt` export), the
progress bar, atomic checkpoint IO, and transcribing a corpus on many processes (`predict`). The
only part of the package that imports Lightning."""
