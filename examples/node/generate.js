// Streams tokens from inference.v1.Router/Generate, with stubs built from protos/ only.
//   npm install && node generate.js [address] [model_id] [prompt]
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [address = "localhost:50051", modelId = "smollm2-135m", prompt = "Hello"] =
  process.argv.slice(2);
const protos = path.resolve(__dirname, "../../protos");
const definition = protoLoader.loadSync("inference/v1/router.proto", {
  includeDirs: [protos], keepCase: true, longs: String, enums: String, defaults: true,
  oneofs: true,
});
const inference = grpc.loadPackageDefinition(definition).inference.v1;
const client = new inference.Router(address, grpc.credentials.createInsecure());

const call = client.Generate({ model_id: modelId, prompt, priority: "PRIORITY_HIGH" });
let messages = 0;
call.on("data", (message) => {
  messages += 1;
  if (message.event === "delta") process.stdout.write(message.delta.text);
  else console.log(`\n[summary] ${JSON.stringify(message.summary)}`);
});
call.on("error", (err) => {
  console.error(`\nerror: ${grpc.status[err.code]}: ${err.details}`);
  process.exit(1);
});
call.on("end", () => console.log(`[${messages} messages]`));
