from trainer.cli.entry import train

train()
