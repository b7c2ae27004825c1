print("hello from /srv/app")
