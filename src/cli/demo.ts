/**
 * `userops demo`: the original recipe, replayed through the queue. Creates four users at once
 * (they travel as one batch or a few), reads one back, and shows the typed not-found error.
 */
import type { UserOpsClient } from '../producer/client.js';
import { UserExistsError, UserNotFoundError } from '../protocol/errors.js';

const PEOPLE = [
  { nickname: 'saghul', fullName: 'Saúl Ibarra Corretgé', email: 'saghul@example.com' },
  { nickname: 'saghul2', fullName: 'Saúl Ibarra Corretgé 2', email: 'saghul2@example.com' },
  // Spelt as in the original recipe.
  { nickname: 'saghu3', fullName: 'Saúl Ibarra Corretgé 3', email: 'saghul3@example.com' },
  { nickname: 'saghul4', fullName: 'Saúl Ibarra Corretgé 4', email: 'saghul4@example.com' },
];

/** The nickname the demo looks up to show the not-found error. */
export const MISSING_NICKNAME = 'saghul5';

/** Runs the demo with `client`, writing lines with `print`. Re-running it is fine. */
export async function runDemo(client: UserOpsClient, print: (line: string) => void): Promise<void> {
  const created = await Promise.allSettled(PEOPLE.map((p) => client.createUser(p)));
  created.forEach((outcome, i) => {
    const nickname = PEOPLE[i]?.nickname;
    if (outcome.status === 'fulfilled') print(`created ${nickname} (id ${outcome.value.id})`);
    else if (outcome.reason instanceof UserExistsError) print(`${nickname} already exists`);
    else throw outcome.reason;
  });
  const saghul = await client.getUser('saghul');
  print(`nickname: ${saghul.nickname}`);
  print(`full name: ${saghul.fullName}`);
  print(`email: ${saghul.email}`);
  try {
    await client.getUser(MISSING_NICKNAME);
    print(`unexpected: ${MISSING_NICKNAME} exists`);
  } catch (err) {
    if (!(err instanceof UserNotFoundError)) throw err;
    print(`${err.name} (${err.code}): ${err.message}`);
  }
}
