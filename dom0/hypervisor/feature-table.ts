// feature-table: README's feature × driver table, made from FEATURES and each driver's
// features (test/32-drivers.test.ts checks README holds exactly this text between its markers).
import { FEATURES, type Feature } from './driver';
import { DRIVERS } from './registry';

export const TABLE_BEGIN = '<!-- feature-table: made by `remusdb doctor --features`; test 32 keeps it true -->';
export const TABLE_END = '<!-- feature-table end -->';

export function featureTable(): string {
  const head = `| feature | ${DRIVERS.map((d) => `\`${d.kind}\``).join(' | ')} |`;
  const rule = `|---|${DRIVERS.map(() => '---').join('|')}|`;
  const notes: string[] = []; // one per distinct reason, shared by the drivers that give it
  const rows = (Object.keys(FEATURES) as Feature[]).map((f) => {
    const { title, option } = FEATURES[f];
    const cells = DRIVERS.map((d) => {
      const s = d.features[f];
      if (s === true) return 'yes';
      const note = `${title}: ${s.reason}.`;
      if (!notes.includes(note)) notes.push(note);
      return `no (${notes.indexOf(note) + 1})`;
    });
    return `| ${title}${option ? ` (\`${option}\`)` : ''} | ${cells.join(' | ')} |`;
  });
  const numbered = notes.map((n, i) => `${i + 1}. ${n}`);
  return [TABLE_BEGIN, '', head, rule, ...rows, '', ...numbered, '', TABLE_END].join('\n');
}
