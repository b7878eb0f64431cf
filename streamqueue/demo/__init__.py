"""``python -m streamqueue.demo``: the whole system on one machine, in one command.

See ``streamqueue.demo.run`` for what it starts and ``streamqueue.demo.handlers``
for the sample job handler.
"""
