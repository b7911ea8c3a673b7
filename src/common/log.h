/*
 * log — one line per event on stderr: "2026-11-25T10:00:00Z level module: message".
 *
 * Thread-safe (one write(2) per line). The level is process-wide and set once at start-up
 * from --log-level or EMBER_LOG. Modules define LOG_MODULE before including this header.
 */
#ifndef EMBER_COMMON_LOG_H
#define EMBER_COMMON_LOG_H

enum log_level { LV_DEBUG, LV_INFO, LV_WARN, LV_ERROR };

void log_set_level(enum log_level level);
/* Parses "debug", "info", "warn", "error"; returns -EINVAL for anything else. */
int log_parse_level(const char *text, enum log_level *out);
void log_msg(enum log_level level, const char *module, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#ifndef LOG_MODULE
#define LOG_MODULE "ember"
#endif
#define log_debug(...) log_msg(LV_DEBUG, LOG_MODULE, __VA_ARGS__)
#define log_info(...) log_msg(LV_INFO, LOG_MODULE, __VA_ARGS__)
#define log_warn(...) log_msg(LV_WARN, LOG_MODULE, __VA_ARGS__)
#define log_error(...) log_msg(LV_ERROR, LOG_MODULE, __VA_ARGS__)

#endif
