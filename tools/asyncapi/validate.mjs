// Parses an AsyncAPI document with @asyncapi/parser; prints its diagnostics as JSON and exits
// non-zero when any is an error (severity 0).
import { readFileSync } from 'node:fs';
import { Parser } from '@asyncapi/parser';

const file = process.argv[2];
const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(file, 'utf8'));
const errors = diagnostics.filter((d) => d.severity === 0);
console.log(JSON.stringify({
  valid: Boolean(document) && errors.length === 0,
  channels: document ? document.channels().length : 0,
  operations: document ? document.operations().length : 0,
  messages: document ? document.components().messages().length : 0,
  errors: errors.map((d) => `${d.path.join('.')}: ${d.message}`),
  warnings: diagnostics.filter((d) => d.severity === 1).length,
}));
process.exit(errors.length === 0 && document ? 0 : 1);
