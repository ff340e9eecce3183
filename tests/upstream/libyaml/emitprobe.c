/* emitprobe: a long-running libyaml user for tests/upstream. It prints the library version,
 * then answers one line per command read from stdin:
 *   seq | map   emit "[a" (or "{a: b") to a writer that then fails, so that emitting the
 *               closing bracket fails, and print the emitter's stacks afterwards;
 *   ok          emit a small document to memory and print it on one line.
 * The emitter's state and stack depths are public fields of yaml_emitter_t. */
#include <stdio.h>
#include <string.h>
#include <yaml.h>

static int failing;

static int writer(void *data, unsigned char *buffer, size_t size)
{
    (void)data; (void)buffer; (void)size;
    return !failing;
}

static int scalar(yaml_emitter_t *e, const char *v)
{
    yaml_event_t ev;
    yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)v, -1, 1, 1, YAML_PLAIN_SCALAR_STYLE);
    return yaml_emitter_emit(e, &ev);
}

static void probe(int mapping)
{
    yaml_emitter_t e;
    yaml_event_t ev;
    int rc;

    failing = 0;
    yaml_emitter_initialize(&e);
    yaml_emitter_set_output(&e, writer, NULL);
    yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING);
    yaml_emitter_emit(&e, &ev);
    yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1);
    yaml_emitter_emit(&e, &ev);
    if (mapping)
        yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1, YAML_FLOW_MAPPING_STYLE);
    else
        yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1, YAML_FLOW_SEQUENCE_STYLE);
    yaml_emitter_emit(&e, &ev);
    scalar(&e, "a");
    if (mapping)
        scalar(&e, "b");
    /* The queued events are written when the end event arrives: "[a" or "{a: b" fit in
     * the shortened buffer, the closing bracket makes it flush, and the writer refuses. */
    failing = 1;
    e.buffer.end = e.buffer.pointer + 5 + (mapping ? 5 : 2);
    if (mapping)
        yaml_mapping_end_event_initialize(&ev);
    else
        yaml_sequence_end_event_initialize(&ev);
    rc = yaml_emitter_emit(&e, &ev);
    printf("emit=%d error=%d state=%d states=%d indents=%d\n", rc, (int)e.error, (int)e.state,
           (int)(e.states.top - e.states.start), (int)(e.indents.top - e.indents.start));
    fflush(stdout);
    e.buffer.end = e.buffer.start;
    yaml_emitter_delete(&e);
}

static void ok(void)
{
    unsigned char out[256];
    size_t n = 0;
    yaml_emitter_t e;
    yaml_event_t ev;

    yaml_emitter_initialize(&e);
    yaml_emitter_set_output_string(&e, out, sizeof out - 1, &n);
    yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING);
    yaml_emitter_emit(&e, &ev);
    yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1);
    yaml_emitter_emit(&e, &ev);
    yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1, YAML_FLOW_SEQUENCE_STYLE);
    yaml_emitter_emit(&e, &ev);
    scalar(&e, "a");
    scalar(&e, "b");
    yaml_sequence_end_event_initialize(&ev);
    yaml_emitter_emit(&e, &ev);
    yaml_document_end_event_initialize(&ev, 1);
    yaml_emitter_emit(&e, &ev);
    yaml_stream_end_event_initialize(&ev);
    yaml_emitter_emit(&e, &ev);
    yaml_emitter_delete(&e);
    out[n] = 0;
    for (size_t i = 0; i < n; i++)
        if (out[i] == '\n')
            out[i] = ' ';
    printf("%s\n", out);
    fflush(stdout);
}

int main(void)
{
    char line[64];

    printf("libyaml %s\n", yaml_get_version_string());
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        if (!strcmp(line, "seq\n"))
            probe(0);
        else if (!strcmp(line, "map\n"))
            probe(1);
        else if (!strcmp(line, "ok\n"))
            ok();
        else {
            printf("unknown\n");
            fflush(stdout);
        }
    }
    return 0;
}
