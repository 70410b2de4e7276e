"""A signup endpoint: the welcome email is a task enqueued in the request's transaction."""

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

try:
    from django.tasks import TaskResultStatus  # Django 6
    from django.tasks.exceptions import TaskResultDoesNotExist
except ImportError:
    from django_tasks import TaskResultStatus  # Django 4.2 to 5.x: the django-tasks package
    from django_tasks.exceptions import TaskResultDoesNotExist

from mysite.tasks import welcome


@csrf_exempt
@require_POST
def signup(request: HttpRequest) -> JsonResponse:
    address = request.POST["email"]
    with transaction.atomic():
        # ... create the account here: the task commits with it, or neither does ...
        result = welcome.enqueue(address=address)
        if request.POST.get("fail"):
            transaction.set_rollback(True)
            return JsonResponse({"error": "signup refused", "task": result.id}, status=400)
    return JsonResponse({"task": result.id}, status=202)


def task_status(request: HttpRequest, task_id: str) -> JsonResponse:
    try:
        result = welcome.get_result(task_id)
    except TaskResultDoesNotExist:
        # An id that is not a task of this backend (or not an id at all) is a 404, not a 500.
        return JsonResponse({"error": "no such task", "task": task_id}, status=404)
    body = {"status": result.status}
    if result.status == TaskResultStatus.SUCCESSFUL:
        body["result"] = result.return_value
    return JsonResponse(body)
