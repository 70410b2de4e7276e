"""The example's tasks: plain Django tasks, nothing Conveyor-specific."""

try:
    from django.tasks import TaskContext, task  # Django 6
except ImportError:
    from django_tasks import TaskContext, task  # Django 4.2 to 5.x: the django-tasks package


@task()
def add(a: int, b: int) -> int:
    return a + b


@task(queue_name="emails", priority=10, takes_context=True)
def welcome(context: TaskContext, address: str) -> dict[str, object]:
    return {"to": address, "attempt": context.attempt, "id": context.task_result.id}


@task()
async def shout(text: str) -> str:
    return text.upper()


@task()
def explode() -> None:
    raise ValueError("boom")
