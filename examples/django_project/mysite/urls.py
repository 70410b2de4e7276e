from django.urls import path

from mysite import views

urlpatterns = [
    path("signup", views.signup),
    path("tasks/<str:task_id>", views.task_status),
]
