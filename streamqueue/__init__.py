"""streamqueue: a job queue in a MongoDB collection.

Consumers wait on a change stream and claim atomically when woken; leases and
delays are judged by the database server's clock.
"""

from streamqueue.errors import LeaseLost, StreamQueueError
from streamqueue.hooks import Hooks
from streamqueue.queue import Job, MongoJob, MongoQueue, Queue
from streamqueue.tasks import Task, Tasks

__all__ = ["Hooks", "Job", "LeaseLost", "MongoJob", "MongoQueue", "Queue", "StreamQueueError",
           "Task", "Tasks"]
__version__ = "0.1.0"
