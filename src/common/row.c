/*
 * row — see row.h.
 */
#include "common/row.h"

#include <string.h>

int row_event_is_gauge(const char *event_type)
{
	static const char *const gauges[] = {"mem-inuse", "hbm-inuse", "inuse_objects",
					      "inuse_space", "goroutines"};

	for (size_t i = 0; i < sizeof(gauges) / sizeof(gauges[0]); i++)
		if (strcmp(event_type, gauges[i]) == 0)
			return 1;
	return 0;
}
