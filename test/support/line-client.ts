// line-client: the client of partition and pool tests, run in a namespace with NsProcess. One
// TCP server on port 9000 of the address given; every line a guest sends is logged as
// `L <from-address> <seq>` in arrival order, so a test sees which copy of a domain said what, when.
export const LINE_CLIENT = `
const net = require('net');
net.createServer((s) => { const from = s.remoteAddress.replace('::ffff:', ''); let buf = '';
  s.on('data', (d) => { buf += d; let i;
    while ((i = buf.indexOf('\\n')) >= 0) {
      console.log('L ' + from + ' ' + buf.slice(0, i).split(' ')[0]); buf = buf.slice(i + 1); } });
  s.on('error', () => {});
}).listen(9000, process.argv[1], () => console.log('READY'));
`;
