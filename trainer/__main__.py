from trainer.entry import train

train()
