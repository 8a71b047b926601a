/* thread.c - see thread.h. */
#include <pthread.h>
#include <string.h>

#include "err.h"
#include "thread.h"

int thread_start_detached(void *(*fn)(void *), const char *name)
{
	pthread_t th;
	pthread_attr_t at;
	pthread_attr_init(&at);
	pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
	int e = pthread_create(&th, &at, fn, NULL);
	pthread_attr_destroy(&at);
	if (e)
		return err_set(e, "cannot start the %s thread: %s", name, strerror(e));
	pthread_setname_np(th, name);
	return 0;
}
